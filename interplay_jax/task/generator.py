"""Synthetic problem generator (iGSM / GSM-Infinite "medium" family), pure Python, no JAX.

``generate_problem(op, context, mode, seed)`` returns one record in the published schema with
*exactly* the requested op. The structure graph and budgets follow the original generator (docs/task.md); instead of
rejection sampling over whole problems, the solution DAG is built to hit the op exactly:

1. draw a structure graph (entities x items, Appendix A steps 1-4);
2. choose the needed nodes (a final node, abstract totals with all their items, extra instance
   parameters) and a random topological order (totals after their items);
3. give every non-final node a later dependant (coverage), then spend the remaining op budget
   one operation at a time (an extra parent or a stated constant "RNG") on instance nodes;
4. draw operators and constants; only this cheap part is retried when a value breaks the filter.

op(G) = sum over solution-path nodes of their number of parents, a stated constant counting as one.
Randomness comes from ``random.Random`` seeded by a SHA-256 of (seed, op, context, mode), so a record
is the same on any machine and under any PYTHONHASHSEED.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random

from interplay_jax.errors import ConfigError
from interplay_jax.task.contexts import get_context

FORWARD = "normalforward"
REVERSE = "forwardreverse"
MODES = (FORWARD, REVERSE)
MIN_OP, MAX_OP = 2, 30
IP_MAX = 20          # structure-edge budget cap (Appendix A)
MAX_VALUE = 1000

# op_max budget per target op (the original's rejection budgets).
_OP_MAX = {2: 3, 3: 3, 4: 4, 5: 6, 6: 6, 7: 10, 8: 10, 9: 10, 10: 15, 11: 15,
           12: 20, 13: 20, 14: 20, 15: 20, 16: 25, 17: 25, 18: 25, 19: 30, 20: 30}
_LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
_LETTERS_REVERSE = [c for c in _LETTERS if c != "x"]
_WIDTH_CENTERS = (0.1, 0.3, 0.5, 0.7, 0.9)


def check_op(op) -> int:
    if isinstance(op, bool) or not isinstance(op, int) or not MIN_OP <= op <= MAX_OP:
        raise ConfigError(f"unsupported op {op!r}; supported ops are {MIN_OP}..{MAX_OP}")
    return op


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def stable_rng(*parts) -> random.Random:
    """A random.Random seeded from a SHA-256 of ``parts`` (never Python's salted hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def content_hash(problem: str, question: str, solution: str) -> str:
    """The record id / dedup key: SHA-256 of (problem, question, solution), 16 hex digits."""
    h = hashlib.sha256()
    for part in (problem, question, solution):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


@dataclasses.dataclass
class Node:
    """One parameter. ``parents`` are node indices in display order; ``rng`` is a stated constant."""
    name: str
    total: bool
    entity: int
    parents: list = dataclasses.field(default_factory=list)
    rng: bool = False
    k: int = 0               # the constant (leaf value, "k plus", "k times")
    combine: str = "sum"     # "sum" | "diff" (two or more non-RNG parents)
    rop: str = "plus"        # "plus" | "times" (RNG with parents)
    needed: bool = False
    value: object = None     # int (forward) or (a, b) meaning a*x + b (reverse)
    letter: str = ""


@dataclasses.dataclass
class Problem:
    """The structured problem: nodes, solution order, target, unknown (reverse) and rendered text."""
    op: int
    context: str
    mode: str
    seed: int
    nodes: list
    order: list              # solution-path node indices, topological; order[-1] is the target
    target: int
    unknown: int = -1        # reverse mode: the node that becomes x
    answer: int = 0
    problem: str = ""
    question: str = ""
    solution: str = ""

    def record(self) -> dict:
        return {"problem": self.problem, "question": self.question, "solution": self.solution,
                "op": self.op, "id": content_hash(self.problem, self.question, self.solution),
                "template": self.context, "mode": self.mode, "length": "zero_context", "d": 2}


class _Retry(Exception):
    pass


class _NewStructure(Exception):
    pass


# ------------------------------------------------------------------------------ structure graph


def _structure(rng: random.Random, op: int, mode: str, ctx, final_total: bool):
    """Appendix A steps 1-4: entity/item widths, edge budget, the bipartite structure graph."""
    op_max = _OP_MAX.get(op, op + 10)
    s = (op_max + 1) // 2
    rel = (s - 1) / (IP_MAX - 1)
    weights = [math.exp(-(rel - c) ** 2) for c in _WIDTH_CENTERS]
    t0, t1 = rng.choices((1, 2, 3, 4, 5), weights, k=2)
    if s <= 5:
        if mode == FORWARD:
            t0, t1 = max(t0, 2), max(t1, 2)
        else:
            t0, t1 = min(t0, 3), min(t1, 3)
    # a user context may list fewer than 5 names per sub-list
    max_ent, max_item = min(map(len, ctx.entities)), min(map(len, ctx.items))
    w0, w1 = min(t0, t1), max(t0, t1)
    e = min(rng.randint(w0, IP_MAX), rng.randint(w0, IP_MAX), w1 * w1)
    n_ent, n_item = min(w0, max_ent), min(w0, max_item)
    e = min(e, min(w1, max_ent) * min(w1, max_item))
    while n_ent * n_item < e:
        grow = [i for i, n in enumerate((n_ent, n_item)) if n < min(w1, (max_ent, max_item)[i])]
        if not grow:
            break
        if rng.choice(grow) == 0:
            n_ent += 1
        else:
            n_item += 1
    e = min(e, n_ent * n_item)
    edges = set()
    deg = [0] * n_ent
    for it in range(n_item):
        en = rng.randrange(n_ent)
        edges.add((en, it))
        deg[en] += 1
    while len(edges) < e:
        empty = [en for en in range(n_ent) if deg[en] == 0]
        en = rng.choice(empty) if empty else rng.randrange(n_ent)
        free = [it for it in range(n_item) if (en, it) not in edges]
        if not free:
            continue
        edges.add((en, rng.choice(free)))
        deg[en] += 1
    if final_total:
        # like the original's core: a random total is asked for; one that cannot fit the op
        # rejects the structure (checked before any naming, so rejections are cheap)
        final_entity = rng.choice([en for en in range(n_ent) if deg[en]])
        if 2 * deg[final_entity] > op:
            raise _NewStructure
    ent_names = rng.sample(rng.choice(ctx.entities), n_ent)
    item_names = rng.sample(rng.choice(ctx.items), n_item)
    edges = sorted(edges)
    rng.shuffle(edges)
    nodes = [Node(f"{item_names[it]} in {ent_names[en]}", False, en) for en, it in edges]
    items_of = {}
    for idx, (en, _) in enumerate(edges):
        items_of.setdefault(en, []).append(idx)
    totals = {}
    for en in sorted(items_of):
        totals[en] = len(nodes)
        nodes.append(Node(f"{ctx.total} in {ent_names[en]}", True, en, parents=list(items_of[en])))
    return nodes, items_of, totals, (totals[final_entity] if final_total else -1)


# ------------------------------------------------------------------------------ solution DAG


def _choose_needed(rng, op, mode, nodes, items_of, totals, final_total):
    """Pick the final node and the needed set (totals bring all their items)."""
    inst = [i for i, n in enumerate(nodes) if not n.total]
    if final_total >= 0:
        final = final_total
        needed = set(nodes[final].parents) | {final}
    else:
        final = rng.choice(inst)
        needed = {final}
    est = sum(len(nodes[t].parents) for t in needed if nodes[t].total) + sum(1 for t in needed if not nodes[t].total)
    goal = op * rng.uniform(0.45, 0.8)
    pool_tot = [t for t in totals.values() if t != final]
    pool_inst = [i for i in inst if i not in needed]
    rng.shuffle(pool_tot)
    rng.shuffle(pool_inst)
    while est < goal:
        added = False
        if pool_tot and rng.random() < 0.6:
            t = pool_tot.pop()
            new_items = [p for p in nodes[t].parents if p not in needed and p != final]
            if final in nodes[t].parents:
                continue        # a total over the final node would come after it
            cost = len(nodes[t].parents) + len(new_items)
            if est + cost <= op - 1:
                needed.add(t)
                needed.update(new_items)
                est += cost
                added = True
        elif pool_inst:
            i = pool_inst.pop()
            if i not in needed:
                needed.add(i)
                est += 1
                added = True
        elif not pool_tot:
            break
        if not added and not pool_inst and not pool_tot:
            break
    return final, needed


def _order(rng, nodes, final, needed):
    """A random topological order of ``needed`` with ``final`` last; totals after their items."""
    rest = [n for n in sorted(needed) if n != final]
    placed = set()
    order = []
    while rest:
        ready = [n for n in rest if not nodes[n].total or all(p in placed for p in nodes[n].parents)]
        if not ready:
            raise _Retry
        w = [3.0 if nodes[n].total else 1.0 for n in ready]
        pick = rng.choices(ready, w)[0]
        rest.remove(pick)
        placed.add(pick)
        order.append(pick)
    order.append(final)
    return order


def _assign_parents(rng, op, nodes, order):
    """Coverage + exact op budget. Sets ``parents``/``rng`` of needed instance nodes."""
    pos = {n: i for i, n in enumerate(order)}
    covered = set()
    for n in order:
        if nodes[n].total:
            covered.update(nodes[n].parents)
    mand = {n: [] for n in order if not nodes[n].total}
    inst_positions = [n for n in order if not nodes[n].total]
    totals_cost = sum(len(nodes[n].parents) for n in order if nodes[n].total)
    capacity = totals_cost + sum(min(4, pos[n] + 1) for n in inst_positions)
    if capacity < op:
        raise _Retry
    for n in order[:-1]:
        if n in covered:
            continue
        cands = [m for m in inst_positions if pos[m] > pos[n] and len(mand[m]) < 4]
        if not cands:
            raise _Retry
        # a first parent replaces the stated constant (free); prefer those so the op budget fits
        m = rng.choices(cands, [3.0 if not mand[m] else 1.0 for m in cands])[0]
        mand[m].append(n)
    base = totals_cost
    for n, ps in mand.items():
        base += max(1, len(ps))
    extra = op - base
    if extra < 0:
        raise _Retry
    state = {n: [list(ps), not ps] for n, ps in mand.items()}   # [parents, rng flag]
    while extra > 0:
        options = []
        for n, (ps, has_rng) in state.items():
            cost = len(ps) + has_rng
            if cost >= 4:
                continue
            if not has_rng and ps:
                options.append((n, None))
            if len(ps) < pos[n]:
                options.append((n, "parent"))
        if not options:
            raise _Retry
        n, kind = rng.choice(options)
        ps, has_rng = state[n]
        if kind is None:
            state[n][1] = True
        else:
            free = [order[j] for j in range(pos[n]) if order[j] not in ps]
            ps.append(rng.choice(free))
        extra -= 1
    for n, (ps, has_rng) in state.items():
        ps = sorted(ps, key=lambda p: pos[p])
        rng.shuffle(ps)
        nodes[n].parents = ps
        nodes[n].rng = has_rng
    for n in order:
        nodes[n].needed = True
        if nodes[n].total:
            rng.shuffle(nodes[n].parents)


def _draw_ops(rng, nodes, order):
    for n in order:
        node = nodes[n]
        if node.total:
            continue
        node.combine = "diff" if len(node.parents) == 2 and rng.random() < 0.5 else "sum"
        if node.rng and node.parents:
            node.rop = "plus" if rng.random() < 0.5 else "times"
            node.k = rng.randint(1, 4) if node.rop == "plus" else rng.randint(2, 4)
        elif node.rng:
            node.k = rng.randint(1, 4)


def _evaluate(nodes, order, unknown, x_value):
    """Values along the order: ints, or (a, b) = a*x + b in reverse mode. Raises _Retry on a bad value."""
    reverse = unknown >= 0
    for n in order:
        node = nodes[n]
        if n == unknown:
            node.value = (1, 0)
        elif not node.parents:
            node.value = (0, node.k) if reverse else node.k
        else:
            vals = [nodes[p].value for p in node.parents]
            if reverse:
                if node.combine == "diff":
                    a0, b0 = vals[0]
                    a1, b1 = vals[1]
                    acc = (a0 - a1, b0 - b1)
                else:
                    acc = (sum(v[0] for v in vals), sum(v[1] for v in vals))
                if node.rng and (acc[0] < 0 or acc[0] * x_value + acc[1] <= 0):
                    raise _Retry    # the intermediate (e.g. a difference) must be positive too
                if node.rng and node.rop == "plus":
                    acc = (acc[0], acc[1] + node.k)
                elif node.rng:
                    acc = (acc[0] * node.k, acc[1] * node.k)
            else:
                acc = vals[0] - vals[1] if node.combine == "diff" else sum(vals)
                if node.rng and acc <= 0:
                    raise _Retry
                if node.rng:
                    acc = acc + node.k if node.rop == "plus" else acc * node.k
            node.value = acc
        val = node.value[0] * x_value + node.value[1] if reverse else node.value
        if val < 0 or val > MAX_VALUE or (val == 0 and not node.total):
            raise _Retry
        if reverse and node.value[0] < 0:
            raise _Retry


# ------------------------------------------------------------------------------ distractors


def _distractors(rng, nodes, order, items_of, totals):
    """Every other instance parameter gets a sentence depending on 1..4 random earlier nodes."""
    placed = list(order)
    placed_set = set(order)
    others = [i for i, nd in enumerate(nodes) if not nd.total and i not in placed_set]
    rng.shuffle(others)
    for d in others:
        node = nodes[d]
        n_deps = 1
        while n_deps < 4 and rng.random() < 0.5:
            n_deps += 1
        has_rng = rng.random() < 0.5
        n_par = n_deps - 1 if has_rng else n_deps
        avail = placed + [t for en, t in totals.items()
                          if t not in placed_set and all(p in placed_set for p in items_of[en])]
        n_par = min(n_par, len(avail))
        node.parents = rng.sample(avail, n_par)
        node.rng = has_rng or not node.parents
        node.combine = "diff" if len(node.parents) == 2 and rng.random() < 0.5 else "sum"
        node.rop = "plus" if rng.random() < 0.5 else "times"
        node.k = rng.randint(2, 4) if (node.parents and node.rop == "times") else rng.randint(1, 4)
        placed.append(d)
        placed_set.add(d)
    return others


# ------------------------------------------------------------------------------ text


def _ref(node) -> str:
    return f"the {node.name}" if node.total else f"the number of {node.name}"


def _subject(node) -> str:
    return f"The {node.name}" if node.total else f"The number of {node.name}"


def _sentence(nodes, node) -> str:
    refs = [_ref(nodes[p]) for p in node.parents]
    if not refs:
        body = str(node.k)
    elif len(refs) == 1:
        body = refs[0]
    elif len(refs) == 2:
        body = (f"the difference between {refs[0]} and {refs[1]}" if node.combine == "diff"
                else f"the sum of {refs[0]} and {refs[1]}")
    else:
        body = "the sum of " + ", ".join(refs[:-1]) + ", and " + refs[-1]
    if refs and node.rng:
        body = f"{node.k} {node.rop} {body}"
    return f"{_subject(node)} equals {body}."


def fmt_linear(a: int, b: int) -> str:
    """a*x + b the way the original prints it: '2*x + 4', 'x', 'x - 2', '7'."""
    if a == 0:
        return str(b)
    xs = "x" if a == 1 else f"{a}*x"
    if b > 0:
        return f"{xs} + {b}"
    if b < 0:
        return f"{xs} - {-b}"
    return xs


def _step(nodes, node, letters, reverse) -> str:
    if reverse:
        fmt = lambda v: fmt_linear(*v)  # noqa: E731
    else:
        fmt = str
    L = node.letter
    head = f"Define {node.name} as {L}; "
    if not node.parents:
        return f"{head}so {L} = {fmt(node.value) if reverse else node.k}."
    plets = [nodes[p].letter for p in node.parents]
    pvals = [nodes[p].value for p in node.parents]
    parts = []
    cur_l, cur_v = plets[0], pvals[0]
    has_rng = node.rng and not node.total
    final = ""
    if len(plets) == 1:
        if has_rng:
            t = letters.pop()
            parts.append(f"{t} = {cur_l} = {fmt(cur_v)}")
            cur_l = t
        else:
            final = f"so {L} = {cur_l} = {fmt(cur_v)}"
    else:
        diff = node.combine == "diff" and not node.total
        for j in range(1, len(plets)):
            nv = pvals[j]
            if reverse:
                if diff:
                    new = (cur_v[0] - nv[0], cur_v[1] - nv[1])
                    shown = f"({fmt(cur_v)}) - ({fmt(nv)})"
                else:
                    new = (cur_v[0] + nv[0], cur_v[1] + nv[1])
                    shown = f"{fmt(cur_v)} + {fmt(nv)}"
            else:
                new = cur_v - nv if diff else cur_v + nv
                shown = f"{cur_v} {'-' if diff else '+'} {nv}"
            expr = f"{cur_l} {'-' if diff else '+'} {plets[j]} = {shown} = {fmt(new)}"
            if j == len(plets) - 1 and not has_rng:
                final = f"so {L} = {expr}"
            else:
                t = letters.pop()
                parts.append(f"{t} = {expr}")
                cur_l = t
            cur_v = new
    if has_rng:
        k = node.k
        if node.rop == "plus":
            shown = f"{k} + {fmt(cur_v)}"
            sym = "+"
        else:
            shown = f"({k}) * ({fmt(cur_v)})" if reverse else f"{k} * {cur_v}"
            sym = "*"
        final = f"so {L} = {k} {sym} {cur_l} = {shown} = {fmt(node.value)}"
    return head + "; ".join(parts + [final]) + "."


def _render(rng, prob: Problem, distractors) -> None:
    nodes, order = prob.nodes, prob.order
    reverse = prob.mode == REVERSE
    # letters without replacement; a solution uses at most op of them (one per operation at most)
    letters = rng.sample(_LETTERS_REVERSE if reverse else _LETTERS, prob.op + 1)
    target = nodes[prob.target]
    sentences = []
    for n in list(order) + list(distractors):
        node = nodes[n]
        if node.total:
            continue
        if n == prob.unknown:
            sentences.append(f"The number of {node.name} exists, and its number is greater than 0.")
        else:
            sentences.append(_sentence(nodes, node))
    steps = []
    if reverse:
        steps.append("The question is difficult, so we use equations to solve it.")
    for n in order:
        node = nodes[n]
        if n == prob.unknown:
            node.letter = "x"
            steps.append(f"Define {node.name} as x; we don't know its value yet but will find it out later.")
            continue
        node.letter = letters.pop()
        steps.append(_step(nodes, node, letters, reverse))
    if reverse:
        a, b = target.value
        total = a * prob.answer + b
        sentences.append(f"{_subject(target)} equals {total}.")
        unknown = nodes[prob.unknown]
        item, entity = unknown.name.split(" in ", 1)
        prob.question = f"How many {item} does {entity} have?"
        expr = fmt_linear(a, b)
        rhs = total - b
        steps.append(f"We know {target.letter} = {total}, so we have {expr} = {total} and we solve it through "
                     f"the following steps: Simplifying the equation: {expr} = {total}. Move all terms to one "
                     f"side: {fmt_linear(a, b - total)} = 0. Isolate the term with x: {a}*x = {rhs}. Divide both "
                     f"sides by {a}: x = {rhs} / {a}. Solution: x = {prob.answer}.")
    else:
        if target.total:
            prob.question = f"What is the {target.name}?"
        else:
            item, entity = target.name.split(" in ", 1)
            prob.question = f"How many {item} does {entity} have?"
    steps.append(f"Answer: {prob.answer}.")
    rng.shuffle(sentences)
    prob.problem = "".join(s + " " for s in sentences)
    prob.solution = " ".join(steps)


# ------------------------------------------------------------------------------ public API


def build_problem(op: int, context: str = "crazy_zootopia", mode: str = FORWARD, seed: int = 0) -> Problem:
    """The structured problem (nodes, order, values, text) for (op, context, mode, seed)."""
    check_op(op)
    check_mode(mode)
    ctx = get_context(context)
    rng = stable_rng("interplay_jax.generator.v1", seed, op, ctx.name, mode)
    # the final node (the question) is a total, sometimes an instance at higher op; decided once so
    # that retries do not bias it
    final_total = op < 6 or rng.random() < 0.8
    for _ in range(10_000):
        try:
            nodes, items_of, totals, final = _structure(rng, op, mode, ctx, final_total)
            return _build_on_structure(rng, op, mode, ctx, seed, nodes, items_of, totals, final)
        except _NewStructure:
            continue
    raise RuntimeError(f"generator found no problem for op={op} mode={mode} context={ctx.name} seed={seed}")


def _build_on_structure(rng, op, mode, ctx, seed, nodes, items_of, totals, final_total):
    reverse = mode == REVERSE
    n_inst = len(nodes) - len(totals)
    if sum(len(nodes[t].parents) for t in totals.values()) + sum(min(4, j + 1) for j in range(n_inst)) < op:
        raise _NewStructure     # even with every parameter needed the op cannot be reached
    for _plan in range(6):
        for nd in nodes:
            if not nd.total:
                nd.parents, nd.rng, nd.needed = [], False, False
            else:
                nd.needed = False
        try:
            final, needed = _choose_needed(rng, op, mode, nodes, items_of, totals, final_total)
            order = _order(rng, nodes, final, needed)
            _assign_parents(rng, op, nodes, order)
        except _Retry:
            continue
        unknown = -1
        if reverse:
            leaves = [n for n in order if not nodes[n].total and not nodes[n].parents]
            unknown = leaves[-1]
        for _values in range(8):
            _draw_ops(rng, nodes, order)
            x_value = rng.randint(1, 4) if reverse else 0
            try:
                _evaluate(nodes, order, unknown, x_value)
                if reverse and nodes[order[-1]].value[0] <= 0:
                    raise _Retry
            except _Retry:
                continue
            prob = Problem(op, ctx.name, mode, seed, nodes, order, order[-1], unknown)
            prob.answer = x_value if reverse else nodes[order[-1]].value
            if reverse:
                nodes[unknown].k = x_value      # the hidden constant: the answer
            distractors = _distractors(rng, nodes, order, items_of, totals)
            _render(rng, prob, distractors)
            return prob
    raise _NewStructure


def generate_problem(op: int, context: str = "crazy_zootopia", mode: str = FORWARD, seed: int = 0) -> dict:
    """One record in the published schema (problem, question, solution, op, id, template, mode,
    length="zero_context", d=2) with exactly ``op`` operations."""
    return build_problem(op, context, mode, seed).record()


def problem_op(prob: Problem) -> int:
    """op(G) recomputed from the structure: sum of parent counts on the solution path (RNG counts)."""
    total = 0
    for n in prob.order:
        node = prob.nodes[n]
        if n == prob.unknown:
            total += 1
        else:
            total += len(node.parents) + (1 if (node.rng and not node.total) else 0)
    return total


def dependency_graph(prob_or_op, context: str = "crazy_zootopia", mode: str = FORWARD, seed: int = 0,
                     distractors: bool = False):
    """The problem's dependency graph as a networkx.DiGraph (nodes = parameter names, edges
    parent -> child). Node attrs: value (int, or (a, b) = a*x+b in reverse mode), total, needed,
    rng (stated constant), k. With ``distractors=False`` only the solution path is included."""
    import networkx as nx  # only here: keeps the generator's import light (worker processes)

    prob = prob_or_op if isinstance(prob_or_op, Problem) else build_problem(prob_or_op, context, mode, seed)
    g = nx.DiGraph(op=prob.op, mode=prob.mode, template=prob.context, target=prob.nodes[prob.target].name,
                   answer=prob.answer)
    keep = set(prob.order) if not distractors else {i for i, n in enumerate(prob.nodes) if n.needed or n.parents}
    for i in sorted(keep, key=lambda i: prob.order.index(i) if i in prob.order else len(prob.order) + i):
        node = prob.nodes[i]
        g.add_node(node.name, value=node.value if node.needed else None, total=node.total, needed=node.needed,
                   rng=bool(node.rng and not node.total), k=node.k, unknown=(i == prob.unknown))
    for i in keep:
        for p in prob.nodes[i].parents:
            if p in keep:
                g.add_edge(prob.nodes[p].name, prob.nodes[i].name)
    return g
