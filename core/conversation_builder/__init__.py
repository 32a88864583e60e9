"""Build grounded chat conversations from the catalog and one day of interactions.

Three kinds, each grounded in data an evaluator can check:

- ``recommendation``: a member's plays of the day (ts order) before a target play;
  the assistant's first named title is the target, the title the member actually
  played next, written ``Title (Year)`` exactly as the catalog has it. Follow-ups
  describe it, give its year/kind and list more titles (the member's later plays,
  then popular titles of the target's genre).
- ``title_qa``: questions on a title's genre, year, kind and synopsis, answered
  from the catalog. No member; the id hashes the title and the question set, so
  identical content gets an identical id (and therefore split).
- ``search``: a member's search event becomes a query derived from the found title
  (genre + kind, genre + decade, kind + decade, or a word of the title); the answer
  lists matching catalog titles ranked by the day's popularity, the found title
  always among them.

Everything is column-wise polars: titles are addressed by their popularity rank
(an int), catalog lookups are ``replace_strict``/joins, and per-row choices of
templates come from a sha256 of the row's key (``seed`` included), never from global
RNG state, so the same inputs give the same rows in the same order.

Modules: ``config`` (settings, schema, system prompt), ``catalog`` (the popularity-ranked
catalog), ``templating`` (per-row choices, templates, message lists, ids), ``answers``
(grounded answers about one title), one module per kind, and ``build`` (the entry point).
"""

from core.conversation_builder.build import build_conversations
from core.conversation_builder.config import CANDIDATE_SCHEMA, DEFAULT_SYSTEM_PROMPT, BuilderConfig
from core.conversation_builder.recommendation import ANSWER_LEADS, RECS_PER_ANSWER, REQUESTS
from core.signals import WATCH_EVENTS

__all__ = [
    "ANSWER_LEADS",
    "CANDIDATE_SCHEMA",
    "DEFAULT_SYSTEM_PROMPT",
    "RECS_PER_ANSWER",
    "REQUESTS",
    "WATCH_EVENTS",
    "BuilderConfig",
    "build_conversations",
]
