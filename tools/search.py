"""search_experiments: SQLite FTS5 over what each experiment was (description, hypothesis), what was
said about it (its notes) and what it changed (the changed lines of its snapshot diff).

The index (`experiments_fts`) is kept on write, never inside a read: SQLite triggers (migration 5)
index a run's description and hypothesis when its row is inserted and each linked note when it is
written; `index_diffs` adds the snapshot's changed lines (git) when a run is submitted. A search is
one FTS5 query, whatever the history's size. User text never reaches FTS5 as syntax: every term is
quoted, so no query can raise an FTS syntax error.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tools.errors import ToolError
from tools.lab import Lab
from tools.schemas import Status, sig, validate

WEIGHTS = (4.0, 2.0, 2.0, 1.0, 0.0)  # bm25 weight per column (the last is notes_max_id, unindexed)
MAX_TERMS = 12
MAX_DIFFS_PER_WRITE = 20    # ~4 ms of git each: a submit also indexes a few runs left from before migration 5
MAX_NOTES_CHARS = 20_000
MAX_DIFF_CHARS = 20_000

Query = Annotated[str, Field(min_length=1, max_length=200,
                             description="words to find, e.g. 'warmup LR'; all must match (falls back to any); "
                                         "'warm*' matches a prefix")]
Verdict = Literal["baseline", "improved", "improved?", "not_improved", "inconclusive", "incomparable"]
SearchLimit = Annotated[int, Field(10, ge=1, le=50, description="hits to return (at most 50)")]


class SearchHit(BaseModel):
    id: int
    status: str
    verdict: str | None
    objective: float | None
    delta: float | None
    kept: bool
    description: str
    matched_in: list[str] = Field(description="fields that hold the terms: description, hypothesis, notes, diff")
    snippet: str = Field(description="the best-matching passage, terms in [brackets]")


class SearchPage(BaseModel):
    query: str = Field(description="the FTS5 query that ran (terms quoted)")
    mode: Literal["all terms", "any term"]
    total: int = Field(description="matching experiments (hits shows at most `limit`)")
    hits: list[SearchHit]
    not_indexed: int = Field(0, description="runs whose code diff is not indexed yet (their text and notes are)")


# -- query handling ------------------------------------------------------------------------
def fts_terms(query: str) -> list[str]:
    """User text -> quoted FTS5 terms. Quotes are doubled inside a term; a trailing * is a prefix."""
    terms = []
    for raw in query.split():
        prefix = raw.endswith("*")
        word = raw.rstrip("*").strip("\"'()[]{}:^,;")
        if not re.search(r"\w", word):
            continue
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    return terms[:MAX_TERMS]


# -- indexing ------------------------------------------------------------------------------
def changed_lines(diff: str) -> str:
    """Only the + and - lines of a unified diff: context lines would make every run match its parent."""
    lines = [ln for ln in diff.splitlines()
             if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join(lines)[:MAX_DIFF_CHARS]


def index_diffs(lab: Lab, max_items: int = MAX_DIFFS_PER_WRITE) -> int:
    """Index the snapshot diffs of the runs waiting for one (newest first: the run just submitted);
    called on write (runs.submit), never by a search. Returns how many were indexed."""
    todo = lab.store.pending_search_diffs(max_items)
    rows = [(exp_id, _snapshot_diff(lab, commit, parent)) for exp_id, commit, parent in todo]
    if rows:
        lab.store.set_search_diffs(rows)
    return len(rows)


def _snapshot_diff(lab: Lab, commit: str | None, parent_commit: str | None) -> str:
    if not commit:
        return ""
    try:
        return changed_lines(lab.workspace.diff(parent_commit, commit, max_chars=4 * MAX_DIFF_CHARS))
    except ToolError:  # a snapshot lost from git (gc'd ref): the text fields are indexed anyway
        return ""


# -- search --------------------------------------------------------------------------------
def search_experiments(lab: Lab, query: str, status: str | None = None, verdict: str | None = None,
                       limit: int = 10) -> SearchPage:
    query = validate("query", Query, query)
    status = validate("status", Status | None, status)
    verdict = validate("verdict", Verdict | None, verdict)
    limit = validate("limit", SearchLimit, limit)
    terms = fts_terms(query)
    if not terms:
        raise ToolError(f"query={query!r} has no words to search for. Fix: pass words or numbers, e.g. 'warmup lr'.")
    mode: Literal["all terms", "any term"] = "all terms"
    fts_query = " ".join(terms)
    total = lab.store.search_count(fts_query, status, verdict)
    if total == 0 and len(terms) > 1:
        mode, fts_query = "any term", " OR ".join(terms)
        total = lab.store.search_count(fts_query, status, verdict)
    rows = lab.store.search(fts_query, status, verdict, limit, WEIGHTS)
    where = lab.store.search_matched_columns(fts_query, [r[0] for r in rows])
    hits = [SearchHit(id=r[0], status=r[1], verdict=r[2], objective=sig(r[3], 6), delta=sig(r[4]), kept=bool(r[5]),
                      description=_clip(r[6], 120), matched_in=where.get(r[0], []),
                      snippet=_clip(" ".join(r[7].split()), 240)) for r in rows]
    return SearchPage(query=fts_query, mode=mode, total=total, hits=hits,
                      not_indexed=lab.store.count_pending_search_diffs())


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"

