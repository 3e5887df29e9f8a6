"""Generated concept questions for the learned router: what people ask about a domain beyond the
artefact its training prompts are (a schema and a request, an arithmetic word problem, a tort fact
pattern, a docstring).

Why: the blind routing sets showed the router's remaining in-domain mistakes were of one kind. A
database question with no query to write ("what is a covering index", "varchar(255) or text in
postgres", "why does postgres ignore my index on LOWER(email)") went to code; a proof or a concept in
math ("why are the eigenvalues of a real symmetric matrix real", "does the sum of 1/(n ln n)
converge") to the backbone, code or medical; a legal doctrine or a situation outside torts and
contracts (fair use, immigration deadlines) to the backbone; a framework concept ("the point of
dependency injection in Spring") to the backbone. The user-phrased sets (`ccoe.domains.phrasings`,
`ccoe.domains.general`) are mostly how-to requests. These generators add the other side: concepts to
explain, comparisons of two named things and symptoms of a misbehaving system (databases); statements
to prove, series, concepts and short stated problems (math); doctrines and everyday legal situations
(law); framework, language and general software concepts (code). Slots that only make sense together
(a MySQL engine and MySQL, a landlord and a deposit) are drawn together.

Each generator gives `count` questions, distinct ignoring case, deterministic for a seed, as people
type them (some lower-cased). What they never are: training data for an expert, or anyone's eval set;
routing quality is measured on query sets written by other people (`benchmarks/routing/`).
"""

from __future__ import annotations

import random

from ccoe.domains.phrasings import distinct_questions, fill_frame

DB_SYSTEMS = ("PostgreSQL", "postgres", "MySQL", "SQLite", "SQL Server", "Oracle", "MariaDB", "my database")
DB_CONCEPTS = (
    "a deadlock", "the READ COMMITTED isolation level", "REPEATABLE READ isolation", "SERIALIZABLE isolation", "a phantom read",
    "a dirty read", "MVCC", "a covering index", "a composite index", "a partial index", "an index on an expression",
    "a GIN index", "a clustered index", "a B-tree index", "a foreign key constraint", "ON DELETE CASCADE", "a materialized view",
    "a stored procedure", "a trigger", "a sequence", "an identity column", "table partitioning", "sharding", "a read replica",
    "write-ahead logging", "VACUUM", "autovacuum", "connection pooling", "a query plan", "a sequential scan",
    "an index-only scan", "a hash join", "a nested loop join", "third normal form", "denormalization", "a surrogate key",
    "a composite primary key", "a CHECK constraint", "a unique constraint", "row-level locking", "SELECT ... FOR UPDATE",
    "optimistic locking", "a savepoint", "two-phase commit", "ACID", "the transaction log", "a collation", "table statistics",
    "cardinality estimation", "an execution plan", "index selectivity", "a schema migration", "a star schema",
    "a lock escalation", "the buffer pool", "a tablespace", "point-in-time recovery", "logical replication",
)
# Pairs and symptoms that belong to one system carry it; None: any system (DB_SYSTEMS).
DB_PAIRS = (
    ("VARCHAR(255)", "TEXT", None), ("CHAR", "VARCHAR", None), ("a UUID", "a bigint identity as the primary key", None),
    ("timestamp", "timestamptz", "PostgreSQL"), ("DECIMAL", "FLOAT for money", None), ("a B-tree index", "a GIN index", "PostgreSQL"),
    ("a clustered index", "a nonclustered index", "SQL Server"), ("a view", "a materialized view", None),
    ("READ COMMITTED", "REPEATABLE READ", None), ("REPEATABLE READ", "SERIALIZABLE", None), ("InnoDB", "MyISAM", "MySQL"),
    ("a primary key", "a unique index", None), ("a subquery", "a join", None), ("a CTE", "a temp table", None), ("EXISTS", "IN", None),
    ("a hash join", "a merge join", None), ("sharding", "partitioning", None), ("optimistic locking", "pessimistic locking", None),
    ("a stored procedure", "a user-defined function", None), ("normalizing", "denormalizing", None), ("DELETE", "TRUNCATE", None),
    ("COUNT(*)", "COUNT(column)", None), ("a natural key", "a surrogate key", None), ("JSONB", "separate columns", "PostgreSQL"),
    ("an index scan", "a bitmap heap scan", "PostgreSQL"), ("statement-level", "row-level triggers", None),
    ("streaming replication", "logical replication", "PostgreSQL"), ("WAL mode", "rollback journal mode", "SQLite"),
    ("NVARCHAR", "VARCHAR", "SQL Server"), ("a sequence", "an identity column", "Oracle"),
)
DB_SYMPTOMS = (
    ("ignore my index when I filter on LOWER(email)", None), ("do a sequential scan even though the column is indexed", None),
    ("show 'Rows Removed by Filter' in EXPLAIN ANALYZE", "PostgreSQL"), ("deadlock when two transactions update the same rows", None),
    ("say 'duplicate key value violates unique constraint' on insert", "PostgreSQL"), ("run out of connections under load", None),
    ("get slower and slower after millions of updates", None), ("lock the whole table while I run ALTER TABLE", None),
    ("let the read replica lag minutes behind the primary", None), ("return rows in a different order each time", None),
    ("take so long to count the rows of a big table", None), ("say 'could not serialize access due to concurrent update'", "PostgreSQL"),
    ("say 'Lock wait timeout exceeded; try restarting transaction'", "MySQL"), ("use so much disk after I add a few indexes", None),
    ("pick a nested loop join that takes forever", None), ("say the column must appear in the GROUP BY clause", "PostgreSQL"),
    ("keep the old value when I read inside my transaction", None), ("say 'database is locked' when two processes write", "SQLite"),
    ("give 'ORA-00942: table or view does not exist' though I can see the table", "Oracle"),
    ("estimate 1 row when there are thousands", None), ("escalate my row locks to a table lock", "SQL Server"),
)
DB_CONCEPT_FRAMES = (
    "what is {concept} in {system}?", "Can someone explain {concept} in databases?", "How does {system} implement {concept}?",
    "When should I use {concept} in {system}?", "{system}: what does {concept} actually do?", "eli5 {concept} (databases)",
    "Is {concept} something I need to care about in {system}?",
)
DB_PAIR_FRAMES = (
    "{system}: {a} vs {b}, which should I use?", "should i use {a} or {b} in {system}", "What's the difference between {a} and {b} in {system}?",
    "{a} or {b} - what are the tradeoffs in {system}?",
)
DB_SYMPTOM_FRAMES = ("Why does {system} {symptom}?", "why would {system} {symptom}", "What would make {system} {symptom}, and how do I fix it?")


def database_questions(count: int, seed: int = 0) -> list[str]:
    """`count` database questions with no query to write: concepts, two-way comparisons and symptoms of
    a misbehaving database, drawn about 2:1:1, most naming a database system (a system-specific pair
    or symptom its own)."""
    rng = random.Random(f"database-concepts:{seed}")

    def draw() -> str:
        kind, system = rng.choice(("concept", "concept", "pair", "symptom")), rng.choice(DB_SYSTEMS)
        if kind == "concept":
            return rng.choice(DB_CONCEPT_FRAMES).format(concept=rng.choice(DB_CONCEPTS), system=system)
        if kind == "pair":
            a, b, own = rng.choice(DB_PAIRS)
            return rng.choice(DB_PAIR_FRAMES).format(a=a, b=b, system=own or system)
        symptom, own = rng.choice(DB_SYMPTOMS)
        return rng.choice(DB_SYMPTOM_FRAMES).format(symptom=symptom, system=own or system)

    return distinct_questions(count, rng, draw, "concepts")


STATEMENTS = (
    "the square root of 2 is irrational", "there are infinitely many primes", "the sum of the first n odd numbers is n squared",
    "every bounded monotone sequence converges", "a continuous function on a closed interval is bounded",
    "the eigenvalues of a real symmetric matrix are real", "the harmonic series diverges", "n^3 - n is divisible by 6 for every integer n",
    "the composition of two injective functions is injective", "every subgroup of a cyclic group is cyclic",
    "det(AB) = det(A) det(B)", "a tree with n vertices has n - 1 edges", "the intersection of two subspaces is a subspace", "e is irrational",
    "log base 2 of 3 is irrational", "a polynomial of degree n has at most n real roots", "the rationals are countable",
    "the real numbers are uncountable", "every prime greater than 3 is 1 or 5 mod 6", "a group of prime order is cyclic",
    "the product of two odd numbers is odd", "1 + 2 + ... + n = n(n+1)/2", "a differentiable function is continuous",
    "the limit of a convergent sequence is unique", "every finite integral domain is a field", "2^n > n^2 for n >= 5",
    "there is no rational number whose square is 3", "a matrix is invertible exactly when its determinant is nonzero",
)
PROOF_FRAMES = (
    "prove that {s}", "How do I prove that {s}?", "can someone explain why {s}?", "Is there an intuitive proof that {s}?",
    "i'm stuck proving that {s}, any hints?", "Show that {s}.", "what's the standard proof that {s}",
)
SERIES = (
    "the sum of 1/n^2", "the sum of 1/(n ln n)", "the sum of (-1)^n/n", "the sum of n/2^n", "the sum of sin(n)/n^2",
    "the sum of 1/sqrt(n)", "the sum of n!/n^n", "the sum of ln(n)/n^2", "the sum of 1/(n^2 + 1)", "the sum of (2/3)^n",
)
SERIES_FRAMES = (
    "is {series} convergent or divergent?", "Which test shows whether {series} converges?",
    "does {series} converge? the ratio test was inconclusive", "How do I find out if {series} converges absolutely?",
)
MATH_CONCEPTS = (
    "eigenvalues and eigenvectors", "the rank of a matrix", "a diagonalizable matrix", "uniform continuity", "the mean value theorem",
    "a Taylor series", "the epsilon-delta definition of a limit", "a group homomorphism", "a normal subgroup", "a modular inverse",
    "the Chinese remainder theorem", "Bayes' theorem", "a posterior distribution with a uniform prior", "expected value",
    "the law of large numbers", "the central limit theorem", "a p-value", "a confidence interval", "variance and standard deviation",
    "a Markov chain", "a generating function", "the pigeonhole principle", "proof by induction", "proof by contradiction",
    "the fundamental theorem of calculus", "integration by parts", "Lagrange multipliers", "the gradient of a function",
    "the determinant", "an inner product", "a metric space", "compactness", "the binomial theorem", "permutations vs combinations",
    "conditional probability", "the geometric distribution", "the Poisson distribution", "Euler's formula", "a vector space basis",
    "the null space of a matrix", "a bijection", "the derivative as a limit", "an improper integral", "a recurrence relation",
)
CONCEPT_FRAMES = (
    "explain {c} intuitively", "{c} in simple terms?", "Can you explain {c} with an example?",
    "i never really understood {c}, can you help?", "ELI5: {c}", "what's the idea behind {c}?",
)
PROBLEM_FRAMES = (
    ("expected number of fair coin flips until you see {pattern}?", {"pattern": ("HH", "HTH", "THT", "three heads in a row", "HT")}),
    ("a coin lands heads {k} out of {n} times. with a uniform prior on p, what's the posterior mean?",
     {"k": ("3", "6", "7", "9"), "n": ("10", "12", "20")}),
    ("what's the probability that at least two of {k} people share a birthday?", {"k": ("5", "10", "23", "30", "40")}),
    ("how many ways can the letters of {word} be arranged?", {"word": ("BANANA", "MISSISSIPPI", "LETTER", "STATISTICS", "PEPPER")}),
    ("find the eigenvalues of the matrix [[{a}, {b}], [{b}, {c}]]", {"a": ("1", "2", "4"), "b": ("1", "2", "3"), "c": ("0", "3", "5")}),
    ("what is {a}^{b} mod {m}? is there a trick?", {"a": ("3", "7", "12"), "b": ("100", "222", "1000"), "m": ("5", "11", "13")}),
    ("how do I integrate {f} dx?", {"f": ("x e^x", "ln(x)", "x^2 sin(x)", "1/(x^2 + 4)", "sec^3(x)", "e^x cos(x)")}),
    ("what's the derivative of {f}, step by step?", {"f": ("x^x", "sin(x)^2 cos(x)", "ln(tan x)", "arctan(1/x)", "e^(x^2)")}),
    ("what's the limit of {f} as x goes to {p}?", {"f": ("sin(x)/x", "(1 + 1/x)^x", "(e^x - 1)/x", "x ln x"), "p": ("0", "infinity")}),
    ("If I roll {k} dice, what's the probability the sum is {s}?", {"k": ("two", "three"), "s": ("7", "10", "12")}),
)


def math_questions(count: int, seed: int = 0) -> list[str]:
    """`count` math questions unlike the domain's word problems: statements to prove, series to test,
    concepts to explain and short stated problems (probability, algebra, calculus), drawn 3:1:3:3 (the
    small sets, series and problems, run out of new texts first, so they end up rarer)."""
    rng = random.Random(f"math-concepts:{seed}")

    def draw() -> str:
        kind = rng.choice(("proof",) * 3 + ("series",) + ("concept",) * 3 + ("problem",) * 3)
        if kind == "proof":
            return rng.choice(PROOF_FRAMES).format(s=rng.choice(STATEMENTS))
        if kind == "series":
            return rng.choice(SERIES_FRAMES).format(series=rng.choice(SERIES))
        if kind == "concept":
            return rng.choice(CONCEPT_FRAMES).format(c=rng.choice(MATH_CONCEPTS))
        return fill_frame(rng, *rng.choice(PROBLEM_FRAMES))

    return distinct_questions(count, rng, draw, "concepts")


DOCTRINES = (
    "fair use", "adverse possession", "the statute of frauds", "promissory estoppel", "res judicata", "the exclusionary rule",
    "qualified immunity", "piercing the corporate veil", "the parol evidence rule", "vicarious liability", "respondeat superior",
    "the reasonable person standard", "consideration in a contract", "the implied warranty of habitability", "at-will employment",
    "a non-compete clause", "joint and several liability", "the doctrine of laches", "eminent domain", "double jeopardy",
    "Miranda rights", "the hearsay rule", "attorney-client privilege", "a durable power of attorney", "probate",
    "community property", "the first-sale doctrine", "trademark dilution", "a work made for hire", "a restraining order",
    "diversity jurisdiction", "summary judgment", "a class action", "mens rea", "entrapment", "the castle doctrine",
    "the duty to mitigate damages", "an easement", "a quitclaim deed", "unjust enrichment", "the business judgment rule",
    "constructive dismissal", "a statute of limitations", "an anticipatory breach", "a liquidated damages clause",
)
JURISDICTIONS = ("California", "Texas", "New York", "Florida", "Ontario", "England", "Australia", "the US", "the EU", "Germany")
DOCTRINE_FRAMES = (
    "what does {d} mean in law?", "Can you explain {d} in plain English?", "how does {d} work in {j}?",
    "Legally speaking, what is meant by {d}?", "When does {d} come up in a case?", "{d} in {j} - how does a court apply it?",
)
SITUATIONS = (
    ("my {who_act}. is that legal?", {"who_act": ("landlord kept my whole security deposit without listing any damage",
     "landlord changed the locks while I was away", "employer won't pay me for overtime", "employer read my private messages on my "
     "own phone", "old employer is withholding my last paycheck", "HOA fined me for a flag on my balcony", "contractor took the "
     "deposit and never started the job", "business partner registered our company's name for himself", "ex moved abroad with our "
     "kids without asking me")}),
    ("can i {use} without permission?", {"use": ("use a 10 second song clip in my YouTube video", "quote song lyrics in my novel",
     "put a brand's logo on t-shirts I sell", "copy a recipe from a cookbook onto my blog", "sell fan art of a Disney character",
     "use a photo I found on Google on my website", "record a phone call with my boss", "name my bakery like one in another state")}),
    ("should i {ip} my {thing}? what's the difference between a trademark, a copyright and a patent",
     {"ip": ("trademark", "copyright", "patent"), "thing": ("logo", "app name", "invention", "novel", "band name", "recipe book")}),
    ("how long do i have to {act} in {j}?", {"act": ("sue after a car accident", "contest a will", "appeal a judgment",
     "respond to a lawsuit", "file a wage claim", "report a workplace injury", "file for unemployment after being fired"),
     "j": JURISDICTIONS}),
    ("i'm on {visa} and {event}. what are my options?", {"visa": ("an H-1B", "an F-1 student visa", "an L-1", "a TN visa",
     "a work permit", "a spousal visa"), "event": ("just got laid off", "want to switch employers", "my employer wants me to "
     "work from another country", "overstayed by a few weeks", "my marriage is ending", "want to start my own company")}),
    ("{who} {event} - do i have a case?", {"who": ("my employer", "my landlord", "a store", "the city", "my neighbour",
     "my doctor's office"), "event": ("fired me a week after I asked for maternity leave", "won't fix the mould in my flat",
     "accused me of shoplifting in front of everyone", "towed my car from my own driveway", "cut down a tree on my side of the "
     "fence", "shared my records with my employer")}),
    ("do i need a lawyer to {task} in {j}?", {"task": ("write a will", "form an LLC", "get divorced without kids", "evict a tenant",
     "go to small claims court", "sell my house", "change my name"), "j": JURISDICTIONS}),
)


def law_questions(count: int, seed: int = 0) -> list[str]:
    """`count` distinct legal questions beyond torts and contracts' fact patterns: doctrines to explain
    (some with a jurisdiction) and everyday legal situations (tenancy, employment, intellectual
    property, immigration, deadlines), about 1:1."""
    rng = random.Random(f"law-concepts:{seed}")

    def draw() -> str:
        if rng.random() < 0.5:
            return rng.choice(DOCTRINE_FRAMES).format(d=rng.choice(DOCTRINES), j=rng.choice(JURISDICTIONS))
        return fill_frame(rng, *rng.choice(SITUATIONS))

    return distinct_questions(count, rng, draw, "concepts")


FRAMEWORK_CONCEPTS = (
    ("Spring Boot", ("dependency injection", "a bean's scope", "@Transactional", "auto-configuration", "profiles")),
    ("React", ("useEffect vs useLayoutEffect", "the virtual DOM", "keys in lists", "a custom hook", "context vs props", "memo and useCallback")),
    ("C#", ("async/await", "ValueTask vs Task", "LINQ deferred execution", "IDisposable and using", "records vs classes")),
    ("Kotlin", ("coroutines", "sealed classes", "null safety", "extension functions", "data classes")),
    ("Android", ("the activity lifecycle", "a ViewModel", "Jetpack Compose recomposition", "Gradle build variants")),
    ("C++", ("move semantics", "RAII", "a CMakeLists.txt", "undefined behaviour", "smart pointers", "templates vs virtual functions")),
    ("Rust", ("lifetimes", "the borrow checker", "traits vs generics", "Box vs Rc vs Arc", "the ? operator")),
    ("Python", ("the GIL", "decorators", "generators vs lists", "metaclasses", "asyncio's event loop", "a virtual environment", "dataclasses")),
    ("JavaScript", ("closures", "the event loop", "promises vs callbacks", "prototype inheritance", "hoisting", "this binding")),
    ("Go", ("goroutines vs threads", "interfaces", "channels", "the context package", "modules and go.sum")),
    ("Git", ("rebase vs merge", "detached HEAD", "the reflog", "cherry-pick", "submodules")),
    ("Docker", ("layers and the build cache", "volumes vs bind mounts", "multi-stage builds", "ENTRYPOINT vs CMD")),
    ("Kubernetes", ("a pod vs a deployment", "liveness vs readiness probes", "a service vs an ingress", "a ConfigMap")),
    ("TypeScript", ("generics", "any vs unknown", "type narrowing", "declaration files")),
    ("Java", ("the JVM's garbage collector", "checked exceptions", "streams", "equals and hashCode", "virtual threads")),
    ("Terraform", ("state files", "modules", "plan vs apply")),
    ("webpack", ("code splitting", "tree shaking", "loaders vs plugins")),
    ("nginx", ("a reverse proxy", "upstream blocks", "location matching")),
)
FRAMEWORK_FRAMES = (
    "What's the point of {c} in {f}?", "{f}: can someone explain {c}?", "how does {c} work in {f}", "ELI5 {c} ({f})",
    "When should I care about {c} in {f}?",
)
DESIGN = (
    "processes vs threads", "big-O notation", "race conditions", "REST vs GraphQL", "the SOLID principles", "the stack vs the heap",
    "unit tests vs integration tests", "memory leaks", "microservices vs a monolith", "hash maps", "mutexes", "tail recursion",
    "functional vs object-oriented programming", "compilers vs interpreters", "semantic versioning", "continuous integration",
    "garbage collection", "immutability", "idempotent APIs", "the factory pattern", "event-driven architecture", "technical debt",
    "websockets vs polling", "OAuth authorization flows", "dependency injection", "caching strategies",
)
DESIGN_FRAMES = ("can you explain {c}?", "{c} in programming - what should I know?", "explain {c} like I'm a junior developer")


def framework_questions(count: int, seed: int = 0) -> list[str]:
    """`count` programming concept questions (a framework's or language's concept, or a general software
    concept), drawn 3:1: what the how-to and error questions of `phrasings.code_questions` miss."""
    rng = random.Random(f"code-concepts:{seed}")

    def draw() -> str:
        if rng.random() < 0.75:
            framework, concepts = rng.choice(FRAMEWORK_CONCEPTS)
            return rng.choice(FRAMEWORK_FRAMES).format(c=rng.choice(concepts), f=framework)
        return rng.choice(DESIGN_FRAMES).format(c=rng.choice(DESIGN))

    return distinct_questions(count, rng, draw, "concepts")


CONCEPTS = {"sql": database_questions, "math": math_questions, "law": law_questions, "code": framework_questions}
