"""Generated user-style questions for the learned router's code and sql classes, and everyday ones for its
out-of-domain class (`everyday_questions`).

Why generate: the router's classes must differ by topic, not by style. The other classes get user-phrased
questions from offline sets (consumer health searches, questions about terms of service, finance and
search-engine questions for out-of-domain: `ccoe.domains.general`), but no offline set asks
programming or SQL questions the way people type them: the code domain's training prompts are
docstrings and signatures, the sql domain's are a schema plus a request. Without user-phrased examples
a "how do I ... in Go?" question looks more like the out-of-domain class (everyday questions) than like
a docstring. These generators fill that gap with combinations of tasks, languages and tools
(deterministic for a seed; each question distinct).

What they never are: training data for an expert, or anyone's eval set. Routing quality is measured on
query sets written by other people (`benchmarks/routing/`), never on these.
"""

from __future__ import annotations

import random

LANGUAGES = ("Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C", "C++", "C#", "Ruby", "PHP", "Kotlin", "Swift",
             "bash", "Scala", "R")
TASKS = (
    "read a file line by line", "parse a JSON string", "make an HTTP GET request", "sort a list of objects by a field",
    "reverse a string", "remove duplicates from a list", "catch and log exceptions", "write a unit test for a function",
    "start a small web server", "format a date as ISO 8601", "split a string on commas", "read environment variables",
    "run a shell command and capture its output", "start a background thread", "wait for several async tasks",
    "read a CSV file", "write a list of records to a file", "convert a string to an integer safely", "deep copy an object",
    "merge two dictionaries", "iterate over a map in insertion order", "define an interface with two implementations",
    "measure how long a function takes", "hash a password", "generate a random UUID", "compress a folder into a zip file",
    "parse command-line arguments", "read a YAML config file", "connect to a websocket", "retry a failing network call",
    "implement a binary search", "implement an LRU cache", "traverse a binary tree", "find the shortest path in a graph",
    "memoize a recursive function", "stream a large file without loading it into memory", "validate an email address with a regex",
    "serialize a class to JSON", "upload a file with a multipart request", "schedule a job every five minutes",
    "write a generator that yields pages of results", "handle a timeout on a socket", "set up logging to a file",
    "mock a dependency in a test", "profile memory usage", "send an email", "read from standard input until EOF",
)
ERRORS = (
    "IndexError: list index out of range", "KeyError when reading a dict", "TypeError: cannot read properties of undefined",
    "NullPointerException", "segmentation fault (core dumped)", "a borrow checker error: cannot borrow as mutable",
    "ModuleNotFoundError: No module named", "undefined reference to main", "a deadlock between two goroutines",
    "ConcurrentModificationException", "SyntaxError: unexpected token", "a stack overflow from deep recursion",
    "an off-by-one error in a loop", "a race condition in my counter", "CORS error: no Access-Control-Allow-Origin header",
    "UnicodeDecodeError: 'utf-8' codec can't decode byte", "a memory leak", "an infinite loop", "a merge conflict",
    "permission denied when running the script", "a failing assertion in my tests", "exit code 137",
)
TOOLS = (
    ("git", ("undo my last commit", "squash three commits", "rebase my branch on main", "resolve a merge conflict",
             "delete a remote branch", "stash my changes")),
    ("Docker", ("make my image smaller", "pass environment variables to a container", "mount a folder into a container",
                "see why my container exits immediately")),
    ("npm", ("fix peer dependency errors", "publish a package", "run a script before build")),
    ("pip", ("install from a requirements file", "pin versions", "fix a dependency conflict")),
    ("React", ("share state between two components", "fetch data when a component mounts", "stop a component from re-rendering")),
    ("CSS", ("center an element", "make a layout responsive", "create a sticky header")),
    ("pandas", ("group rows and sum a column", "drop rows with missing values", "join two DataFrames")),
    ("Kubernetes", ("restart a deployment", "read a pod's logs")),
    ("VS Code", ("set up a debugger for my project", "format code on save")),
    ("regex", ("match an IP address", "capture the domain of a URL")),
)
CODE_FRAMES = (
    "How do I {task} in {lang}?", "how to {task} in {lang}", "What's the best way to {task} in {lang}?",
    "Write a {lang} function to {task}.", "{lang}: {task}?", "Can you show me how to {task} using {lang}?",
    "In {lang}, what's the idiomatic way to {task}?", "I need to {task} in {lang}, any example?",
)
ERROR_FRAMES = (
    "My {lang} program fails with {error}. How do I fix it?", "getting {error} in {lang}, what does it mean",
    "Why do I get {error} in my {lang} code?", "{lang} {error} - how to debug this?",
)
TOOL_FRAMES = ("How do I {task} with {tool}?", "{tool}: how to {task}", "what's the command to {task} in {tool}?")


def distinct_questions(count: int, rng: random.Random, draw, setting: str = "generated") -> list[str]:
    """`count` texts from `draw()`, distinct ignoring case (the router's encoder lower-cases, so "What
    is X" and "what is x" would be one text counted twice), each capitalised (7 in 10) or lower-cased
    as people type; a count the generator cannot reach is an error naming the `setting` to lower,
    not an endless loop."""
    out: dict[str, str] = {}
    for _ in range(100 * count + 1000):
        if len(out) >= count:
            return list(out.values())
        text = draw()
        out.setdefault(text.lower(), text[0].upper() + text[1:] if rng.random() < 0.7 else text.lower())
    raise ValueError(f"could draw only {len(out)} distinct questions, {count} asked: lower `{setting}`")


def fill_frame(rng: random.Random, frame: str, slots: dict[str, tuple[str, ...]]) -> str:
    """`frame` with each of its `slots` filled by one value drawn from that slot's values (in slot order)."""
    return frame.format(**{name: rng.choice(values) for name, values in slots.items()})


def code_questions(count: int, seed: int = 0) -> list[str]:
    """`count` distinct programming questions in user phrasing: how-to (task x language), error messages
    (error x language) and tool questions (git, Docker, npm, ...), in about 5:3:2 proportion."""
    rng = random.Random(f"code-phrasings:{seed}")
    kinds = ("howto",) * 5 + ("error",) * 3 + ("tool",) * 2

    def draw() -> str:
        kind = rng.choice(kinds)
        if kind == "howto":
            return rng.choice(CODE_FRAMES).format(task=rng.choice(TASKS), lang=rng.choice(LANGUAGES))
        if kind == "error":
            return rng.choice(ERROR_FRAMES).format(error=rng.choice(ERRORS), lang=rng.choice(LANGUAGES))
        tool, tasks = rng.choice(TOOLS)
        return rng.choice(TOOL_FRAMES).format(task=rng.choice(tasks), tool=tool)

    return distinct_questions(count, rng, draw)


TABLES = (
    ("customers", ("country", "city", "email", "company")), ("orders", ("order date", "status", "total")),
    ("invoices", ("billing country", "invoice date", "total")), ("employees", ("title", "hire date", "manager")),
    ("tracks", ("genre", "composer", "duration", "unit price")), ("albums", ("artist", "title", "release year")),
    ("products", ("category", "price", "stock")), ("students", ("grade", "enrollment year", "major")),
    ("payments", ("method", "amount", "payment date")), ("users", ("signup date", "plan", "last login")),
)
SQL_REQUESTS = (
    "list all {table} where the {column} is {value}", "count the {table} per {column}", "find the top 5 {table} by {column}",
    "get the average {column} of {table} per year", "show {table} with no matching {other}", "join {table} with {other}",
    "find duplicate {table} by {column}", "rank {table} by {column} within each group", "get the total {column} per month",
    "delete {table} older than a year", "return the second highest {column} in {table}", "list {table} sorted by {column}",
)
SQL_FRAMES = (
    "Write a SQL query to {request}.", "sql query to {request}", "How do I {request} in SQL?",
    "Give me the query that will {request}.", "Can you write a query to {request}?", "{request} - what's the SQL for that?",
)
SQL_CONCEPTS = (
    "What's the difference between WHERE and HAVING?", "When should I use a LEFT JOIN instead of an INNER JOIN?",
    "What does GROUP BY do?", "How does a window function like ROW_NUMBER() work?", "What is a correlated subquery?",
    "When should I add an index to a table?", "What's the difference between UNION and UNION ALL?",
    "How do I write a common table expression (WITH clause)?", "What is a primary key vs a foreign key?",
    "Why does my query with GROUP BY say the column must appear in the aggregate?", "How do NULLs behave in COUNT()?",
    "What's a self join and when do I need one?", "How do I pivot rows into columns in SQL?",
    "What's the difference between DELETE, TRUNCATE and DROP?", "How do I paginate results with LIMIT and OFFSET?",
)
VALUES = ("'Canada'", "greater than 100", "null", "in 2021", "'active'", "between 10 and 20", "'Rock'")


def sql_questions(count: int, seed: int = 0) -> list[str]:
    """`count` distinct SQL questions in user phrasing: requests over everyday tables (customers,
    invoices, tracks, ...) and, one in six, a question about a SQL concept."""
    rng = random.Random(f"sql-phrasings:{seed}")
    concepts = list(SQL_CONCEPTS)

    def draw() -> str:
        if concepts and rng.random() < 1 / 6:
            return concepts.pop(rng.randrange(len(concepts)))
        (table, columns), (other, _) = rng.sample(TABLES, 2)
        request = rng.choice(SQL_REQUESTS).format(table=table, column=rng.choice(columns), other=other, value=rng.choice(VALUES))
        return rng.choice(SQL_FRAMES).format(request=request)

    return distinct_questions(count, rng, draw)


GENERATORS = {"code": code_questions, "sql": sql_questions}


# Everyday questions for the out-of-domain class: the development sets showed the router sending questions
# with a price, a duration or a quantity to math, and ones about pets, food, exercise or care to medical.
# Each entry: a frame and its slots; what the slots hold keeps the question an everyday one.
EVERYDAY = (
    ("what's a good {product} under ${price}?", {"product": ("mechanical keyboard", "pair of running shoes", "espresso machine",
     "robot vacuum", "tent for two", "air fryer", "office chair", "pair of headphones", "carry-on suitcase", "road bike"),
     "price": ("50", "80", "100", "150", "200", "300", "500")}),
    ("is a ${price} {product} worth it or should i save for a better one", {"product": ("blender", "mattress", "camera",
     "gaming monitor", "stand mixer", "winter coat"), "price": ("60", "120", "250", "400", "900")}),
    ("how long does it take to {trip}?", {"trip": ("walk the Camino de Santiago", "drive from Chicago to Denver",
     "hike the Inca Trail", "cycle across the Netherlands", "take the train from Paris to Rome", "see the main sights of Kyoto",
     "sail from Florida to the Bahamas")}),
    ("what should i pack for {days} days of {activity} in {place} in {month}?", {"days": ("3", "5", "7", "10", "14"),
     "activity": ("hiking", "skiing", "sightseeing", "camping", "beach time"), "place": ("Patagonia", "Iceland", "Japan",
     "the Alps", "Morocco", "Scotland", "Vietnam"), "month": ("March", "June", "October", "December")}),
    ("how often should i {task} on a {year} {car}?", {"task": ("change the oil", "rotate the tires", "replace the brake pads",
     "change the air filter", "flush the coolant"), "year": ("2012", "2015", "2018", "2021"), "car": ("Honda Civic",
     "Toyota Corolla", "Ford F-150", "Subaru Outback", "VW Golf")}),
    ("my car makes a {noise} noise when i {action}, what could it be", {"noise": ("squealing", "clicking", "grinding",
     "humming"), "action": ("turn the wheel", "brake", "accelerate", "go over bumps")}),
    ("how long should a {food} rest after {cooking}?", {"food": ("steak", "roast chicken", "brisket", "pork shoulder",
     "loaf of bread", "turkey"), "cooking": ("grilling", "roasting", "smoking", "baking")}),
    ("how long do i cook a {weight} pound {food} at {temp} degrees?", {"weight": ("2", "3", "5", "8", "12"),
     "food": ("turkey", "pork loin", "ham", "prime rib", "chicken"), "temp": ("325", "350", "375", "400")}),
    ("what's the difference between {pair}?", {"pair": ("espresso and ristretto", "baking soda and baking powder",
     "a latte and a flat white", "prosecco and champagne", "a stew and a braise", "sourdough and regular bread")}),
    ("{ask}{choice}?", {"ask": ("", "which is better: ", "help me choose: "), "choice": ("kindle or kobo for reading in bed",
     "minivan or three-row suv for a family of five", "ipad or a cheap laptop for taking notes in class",
     "gas or charcoal grill for a small patio", "airpods or sony earbuds for running", "robot vacuum or cordless stick vacuum for a "
     "small flat", "road bike or hybrid bike for commuting", "down or synthetic jacket for wet weather", "espresso machine or moka pot "
     "for a beginner", "a tent or a hammock for a week of backpacking")}),
    ("is a {size} inch {screen} too big for a {room} {place}?", {"size": ("43", "55", "65", "75"), "screen": ("tv", "monitor"),
     "room": ("10x12", "12x14", "small", "narrow"), "place": ("bedroom", "living room", "office", "dorm room")}),
    ("how do i get {stain} out of {fabric}?", {"stain": ("red wine", "coffee", "grease", "ink", "candle wax", "a sweat stain"),
     "fabric": ("a wool carpet", "a white shirt", "a couch cushion", "jeans", "a suede jacket", "a wooden table")}),
    ("my car {issue}, is it {part}?", {"issue": ("battery died twice this week", "won't start when it's cold",
     "shows a check engine light", "pulls to the left", "smells like burning after long drives"),
     "part": ("the alternator", "the starter", "the battery", "the spark plugs", "the alignment")}),
    ("is {service} worth paying for on {trip}?", {"service": ("an airport lounge", "travel insurance", "a seat upgrade",
     "premium economy", "a rental car"), "trip": ("a 4 hour layover", "a week in Spain", "a 10 hour flight", "a weekend in Rome")}),
    ("party ideas for my kid turning {age}, {n} kids coming, {budget}", {"age": ("5", "7", "9", "12"),
     "n": ("6", "10", "15"), "budget": ("on a budget", "no theme yet", "maybe indoors", "two hours")}),
    ("how do i tell my {person} that {topic} without it being awkward?", {"person": ("roommate", "neighbour", "friend",
     "coworker", "sister"), "topic": ("they need to pay their share of the utilities", "the music is too loud at night",
     "i can't lend them money again", "i'm not coming to the party", "they keep borrowing my things")}),
    ("can i use {swap} in {dish}?", {"swap": ("yogurt instead of sour cream", "honey instead of sugar", "olive oil instead of "
     "butter", "oat milk instead of cream", "shallots instead of onions"), "dish": ("banana bread", "a curry", "pancakes",
     "a soup", "brownies")}),
    ("how often should i {task} my {pet}?", {"task": ("bathe", "walk", "brush", "feed", "trim the nails of"),
     "pet": ("husky", "golden retriever", "cat", "rabbit", "guinea pig", "labrador", "poodle")}),
    ("why does my {pet} {behaviour}?", {"pet": ("cat", "dog", "parrot", "puppy", "kitten"), "behaviour": ("purr so loudly",
     "chew the furniture", "bark at night", "knead blankets", "follow me everywhere", "hide under the bed")}),
    ("how much should a {months} month old {pet} weigh?", {"months": ("3", "4", "6", "8", "10"),
     "pet": ("golden retriever", "german shepherd", "beagle", "maine coon kitten", "french bulldog")}),
    ("how do i keep my {plant} alive while i'm away for {weeks} weeks?", {"plant": ("houseplants", "tomato plants",
     "orchids", "succulents", "herb garden"), "weeks": ("2", "3", "4")}),
    ("how do i get my {age} year old to {habit}?", {"age": ("2", "3", "4", "6", "9", "13"), "habit": ("sleep in their own bed",
     "eat vegetables", "do homework without a fight", "put toys away", "stop interrupting", "spend less time on the tablet")}),
    ("what's a good {weeks}-week plan to {goal}?", {"weeks": ("6", "8", "10", "12", "16"), "goal": ("run my first 5k",
     "go from couch to a half marathon", "do 20 pull-ups", "get ready for a ski trip", "learn to swim laps")}),
    ("what's the proper form for a {exercise}? i feel like {problem}", {"exercise": ("deadlift", "squat", "bench press",
     "kettlebell swing", "push-up"), "problem": ("my hips shoot up first", "my back rounds", "my knees cave in",
     "i'm using my arms too much")}),
    ("how do i negotiate the price of {thing}?", {"thing": ("a used car at a dealership", "rent with my landlord",
     "a sofa at a furniture store", "a house", "a wedding venue")}),
    ("is it better to {choice}?", {"choice": ("lease a car or buy one", "rent or buy a flat", "pay off my credit card or build "
     "an emergency fund first", "buy a new phone or repair the old one", "fly or take the night train to Vienna")}),
    ("how much should i save each month to {goal} in {years} years?", {"goal": ("buy a house", "take a trip around the world",
     "replace my car", "pay for a wedding"), "years": ("2", "3", "5")}),
    ("who won the {year} {event}?", {"year": ("1986", "1994", "2003", "2010", "2018"), "event": ("World Cup", "Tour de France",
     "Wimbledon men's final", "Eurovision Song Contest", "Super Bowl")}),
    ("what's the oldest {thing} in the world that's still {state}?", {"thing": ("university", "restaurant", "hotel",
     "brewery", "library"), "state": ("operating", "open", "in use")}),
    ("can you rewrite this to sound more {tone}: '{text}'", {"tone": ("professional", "friendly", "polite", "confident"),
     "text": ("hey just checking if u got my email lol", "i cant come tmrw sorry", "pls send the stuff asap",
              "thx for the gift it was ok")}),
    ("how many {item} do i need for {count} people?", {"item": ("pounds of pasta", "bottles of wine", "loaves of bread",
     "pounds of ground beef", "bags of ice"), "count": ("8", "12", "20", "40")}),
    ("recommend a {genre} {medium} like {title}", {"genre": ("sci-fi", "mystery", "fantasy", "historical"),
     "medium": ("book", "show", "movie", "podcast"), "title": ("Dune", "Sherlock", "The Expanse", "Wolf Hall", "Dark")}),
    ("{ask} {topic}{tail}", {"ask": ("explain", "can you explain", "help me understand", "eli5:"), "topic": ("the greenhouse effect",
     "plate tectonics", "how tides work", "how airplanes stay in the air", "black holes", "the causes of World War I", "how hurricanes form",
     "how a heat pump heats a house", "how noise-cancelling headphones work", "the fall of the Roman Empire", "how bread rises",
     "how a refrigerator keeps things cold", "why the sky is blue"), "tail": ("", " in simple terms", " to a ten year old", "?")}),
    ("how does {game} work?", {"game": ("cricket", "rugby", "curling", "pickleball", "mahjong", "bridge", "the game of go",
     "american football", "offside in ice hockey", "scoring in tennis")}),
    ("how do you say '{phrase}' in {language}?", {"phrase": ("good morning", "where is the bathroom", "thank you very much",
     "how much does this cost", "i'm lost", "nice to meet you"), "language": ("French", "Spanish", "Italian", "Japanese",
     "Portuguese", "Korean", "Dutch")}),
    ("write a {kind} for my {who}'s {event}", {"kind": ("toast", "short speech", "poem", "card message"), "who": ("best friend",
     "brother", "grandmother", "coworker", "daughter"), "event": ("wedding", "retirement", "50th birthday", "graduation")}),
    ("how do i ask {request} without sounding {tone}?", {"request": ("my boss for a raise", "my manager for a day off",
     "my teacher for an extension", "my team lead for more responsibility", "a mentor for feedback on my portfolio",
     "my parents to stop giving me career advice"), "tone": ("entitled", "rude", "needy", "desperate")}),
    ("how do i fix a {problem}?", {"problem": ("leaky faucet", "running toilet", "squeaky door", "stuck window",
     "clogged shower drain", "wobbly table leg")}),
)


def everyday_questions(count: int, seed: int = 0) -> list[str]:
    """`count` distinct everyday questions for the out-of-domain class, several of them carrying a price,
    a duration or a quantity, or about pets, food, exercise or children: what the router must not send to
    math or medical just because of a number or a body."""
    rng = random.Random(f"everyday-phrasings:{seed}")

    def draw() -> str:
        return fill_frame(rng, *rng.choice(EVERYDAY))

    return distinct_questions(count, rng, draw)
