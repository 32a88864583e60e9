"""Prefix stability: when every serving prompt is a prefix of the full rendering by construction.

Checking a turn's serving prompt means rendering all turns before it, so checking every
turn costs time quadratic in the turns. For templates whose syntax proves that each prompt
is the full rendering up to where the loop reached the turn, plus one generation prompt,
one rendering per conversation suffices; all other templates keep the exact per-turn path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jinja2 import nodes as jinja_nodes

from core.masking.compiled_template import compile_jinja_template
from core.masking.tokenizer_info import TokenizerInfo

_PREFIX_SAFE_LOOP_ATTRS = frozenset({"index", "index0", "first", "previtem", "changed", "cycle", "depth", "depth0"})
_PREFIX_UNSAFE_NODES = (
    jinja_nodes.Extends,
    jinja_nodes.Include,
    jinja_nodes.Import,
    jinja_nodes.FromImport,
    jinja_nodes.Block,
)


def prefix_bound(info: TokenizerInfo) -> int | None:
    """``_prefix_stable_bound`` of the tokenizer's template (None: render every prompt), worked out once."""
    if not info.prefix_checked:
        bound = None
        if compile_jinja_template is not None:
            try:
                env = compile_jinja_template(info.template).environment
                bound = _prefix_stable_bound(env.parse(info.template))
            except Exception:  # anything jinja does not parse as we expect: render every prompt
                bound = None
        info.prefix_bound = bound
        info.prefix_checked = True
    return info.prefix_bound


def _walk_names(node: Any, ancestors: list[Any]) -> Iterator[tuple[Any, list[Any]]]:
    """Every Name node under ``node`` with its ancestors (outermost first)."""
    if isinstance(node, jinja_nodes.Name):
        yield node, ancestors
        return
    ancestors.append(node)
    for child in node.iter_child_nodes():
        yield from _walk_names(child, ancestors)
    ancestors.pop()


def _truth_tested(node: Any, ancestors: list[Any]) -> bool:
    """Whether only the truth value of ``node`` is used: it is an if/for test, possibly under and/or/not."""
    child = node
    for parent in reversed(ancestors):
        if isinstance(parent, (jinja_nodes.And, jinja_nodes.Or, jinja_nodes.Not)):
            child = parent
            continue
        return isinstance(parent, (jinja_nodes.If, jinja_nodes.CondExpr, jinja_nodes.For)) and parent.test is child
    return False


def _prefix_stable_bound(tree: Any) -> int | None:
    """``b`` such that, for every ``t > b``, rendering ``messages[:t]`` with the generation prompt gives
    ``rendering[:p] + G``: the full rendering up to where its loop reached message ``t``, then a text
    ``G`` that is the same for every such ``t``. None when the template's structure does not prove it.

    Proved from the template's syntax, not from sample output, so no conversation can break it:
    the template's top level is ``pre; for ... in messages; post`` with one loop over ``messages``
    (not recursive, no ``else``), and ``messages`` is read nowhere else except as ``messages[k]``
    with a constant ``k >= 0`` (``b`` is the largest such ``k``) or for its truth value. Loop bodies
    may use ``loop.index``/``first``/``previtem``/``changed``/``cycle``/``depth`` but never what
    needs later messages (``loop.last``, ``length``, ``revindex``, ``nextitem``).
    ``add_generation_prompt`` is read only in ``post``, and ``post`` reads no variable the template
    assigns anywhere (so nothing the loop computed). Then the run over ``messages[:t]`` does exactly
    what the run over all messages does until its loop asks for message ``t``; there it leaves the
    loop and runs ``post``, whose output depends on nothing that differs between such ``t``.
    Templates that rewrite earlier turns (strip reasoning from all but the last turn, number turns
    from the end, ...) need later messages and fail these rules: their prompts are rendered one by one.
    """
    body = list(tree.body)
    loops = [
        k
        for k, node in enumerate(body)
        if isinstance(node, jinja_nodes.For)
        and isinstance(node.iter, jinja_nodes.Name)
        and node.iter.name == "messages"
    ]
    if len(loops) != 1:
        return None
    where = loops[0]
    loop = body[where]
    if loop.recursive or loop.else_:
        return None
    if any(True for _ in tree.find_all(_PREFIX_UNSAFE_NODES)):
        return None
    stored = {n.name for n in tree.find_all(jinja_nodes.Name) if n.ctx in ("store", "param")}
    stored |= {n.name for n in tree.find_all(jinja_nodes.NSRef)}
    stored |= {n.name for n in tree.find_all(jinja_nodes.Macro)}
    if stored & {"messages", "loop", "add_generation_prompt", "self"}:
        return None
    bound = -1
    for position, statement in enumerate(body):
        for name, ancestors in _walk_names(statement, []):
            if name.ctx != "load":
                continue
            parent = ancestors[-1] if ancestors else None
            if name.name == "messages":
                if name is loop.iter:
                    continue
                if (
                    isinstance(parent, jinja_nodes.Getitem)
                    and parent.node is name
                    and isinstance(parent.arg, jinja_nodes.Const)
                    and type(parent.arg.value) is int
                    and parent.arg.value >= 0
                ):
                    bound = max(bound, parent.arg.value)
                    continue
                if _truth_tested(name, ancestors):
                    continue
                return None
            if name.name == "loop":
                if (
                    isinstance(parent, jinja_nodes.Getattr)
                    and parent.node is name
                    and parent.attr in _PREFIX_SAFE_LOOP_ATTRS
                ):
                    continue
                return None
            if name.name == "self":
                return None
            if name.name == "add_generation_prompt" and position <= where:
                return None
            if position > where and name.name in stored:
                return None
    return bound
