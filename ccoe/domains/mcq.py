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
from ccoe.domains.sources import EVALS, fetch


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

    def build(self) -> tuple[list[dict], list[dict]]:
        items = [self.parse(r) for r in read_jsonl(fetch(EVALS)[self.file])]
        train, held = split_by_hash(items, self.eval_fraction)
        return train, held

    def score(self, item: dict, output) -> float:
        return score_choice(item, output)

    def complete(self, text: str) -> bool:
        """Choice tasks are scored by likelihood, never generated."""
        return False


LAW = ChoiceDomain(
    name="law",
    file="us_tort_law.jsonl",
    parse=parse_tort,
    card=DataCard(
        source="openai/evals registry data `us_tort_law/samples.jsonl` (PyPI `evals` 3.0.1.post1; code MIT, data under its own terms)",
        license="see the evals registry; for research evaluation",
        train="~70% of the 340 questions (content-hash split), prompt = question + options, response = correct option, with the options and the answer index",
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
    eval_fraction=0.33,
    card=DataCard(
        source="openai/evals registry data `medmcqa/samples.jsonl` (MedMCQA sample; PyPI `evals` 3.0.1.post1)",
        license="MedMCQA: Apache-2.0; evals code MIT",
        train="~67% of the 300 questions (content-hash split), prompt = question + options, response = correct option, with the options and the answer index",
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
