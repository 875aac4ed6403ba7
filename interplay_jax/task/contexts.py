"""Contexts (the study's "templates") as data: names of entities, items and the total.

A context is pure data; the generator never names a context in code. Add a fourth with
``register_context(Context(...))`` and every generator/mixture function accepts it by name or id.
"""
from __future__ import annotations

import dataclasses

from interplay_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Context:
    """One surface for the same graph machinery.

    name: the ``template`` value in the published data (e.g. "crazy_zootopia").
    short_id: "A", "B", "C", ...
    entities: sub-lists of entity names; one sub-list is chosen per problem.
    items: sub-lists of item names; one sub-list is chosen per problem.
    total: the category total's name, e.g. "total number of adult animals".
    """
    name: str
    short_id: str
    entities: tuple
    items: tuple
    total: str

    def __post_init__(self):
        if not self.name or not self.short_id or not self.total:
            raise ConfigError(f"context {self.name!r}: name, short_id and total must be non-empty")
        for field in ("entities", "items"):
            subs = getattr(self, field)
            if not subs or any(len(sub) < 1 for sub in subs):
                raise ConfigError(f"context {self.name!r}: {field} needs at least one non-empty sub-list")
            if any(len(set(sub)) != len(sub) for sub in subs):
                raise ConfigError(f"context {self.name!r}: duplicate names in {field}")
        object.__setattr__(self, "entities", tuple(tuple(s) for s in self.entities))
        object.__setattr__(self, "items", tuple(tuple(s) for s in self.items))


CONTEXTS: dict[str, Context] = {}


def register_context(ctx: Context, replace: bool = False) -> Context:
    """Add ``ctx`` to the registry (by name and short id)."""
    for key in (ctx.name, ctx.short_id):
        if key in CONTEXTS and not replace and CONTEXTS[key] != ctx:
            raise ConfigError(f"context key {key!r} is already registered")
    CONTEXTS[ctx.name] = ctx
    CONTEXTS[ctx.short_id] = ctx
    return ctx


def context_names() -> list[str]:
    """Names (not ids) of all registered contexts, in registration order."""
    seen = []
    for ctx in CONTEXTS.values():
        if ctx.name not in seen:
            seen.append(ctx.name)
    return seen


def get_context(name_or_id) -> Context:
    if isinstance(name_or_id, Context):
        return name_or_id
    ctx = CONTEXTS.get(name_or_id)
    if ctx is None:
        known = ", ".join(f"{CONTEXTS[n].short_id}={n}" for n in context_names())
        raise ConfigError(f"unknown context {name_or_id!r}; known: {known}")
    return ctx


register_context(Context(
    name="crazy_zootopia", short_id="A",
    entities=(("Beverly Forest", "Cedar Valley", "Oakridge Riverside", "Pine Ridge", "Maple Creek"),
              ("South Zoo", "Jefferson Circus", "Mayer Aquarium", "Bundle Ranch", "Hamilton Farm")),
    items=(("adult bear", "adult wolf", "adult deer", "adult fox", "adult racoon"),
           ("adult eagle", "adult parrot", "adult owl", "adult blue jay", "adult crow")),
    total="total number of adult animals"))

register_context(Context(
    name="teachers_in_school", short_id="B",
    entities=(("Evervale City", "Hawkesbury", "Glenfield City", "Westhaven City", "Brightford"),
              ("Riverton City", "Clearwater Bay", "Shoreline City", "Oakbridge City", "Ruby Bay")),
    items=(("elementary school", "private middle school", "public highschool",
            "regional medical school", "culinarian school"),),
    total="total number of schools"))

register_context(Context(
    name="movie_festival_awards", short_id="C",
    entities=(("Taylor Movie Festival", "Verdi Movie Festival", "West Sahara Movie Festival",
               "Northwood Movie Festival", "Golden Banana Movie Festival"),
              ("Festival Lumière de Valmont", "Rêves de Belleville", "Cinéma de Montreval",
               "Festival de Clairmont", "Festival de Saint-Rivage")),
    items=(("upbeat metropolis comedy", "solemn period drama", "futuristic sci-fi movie",
            "calm road movie", "intense detective thriller"),),
    total="total number of movies"))
