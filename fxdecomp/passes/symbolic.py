"""Pass 6, in part: affinity from the symbolic form of a run of pointwise ops (the affinity
pass calls it).

Op rules classify one op at a time, so ``torch.where(mask, x, 0)``, ``lerp(x, y, w)`` or
``(x + c)**2 - x**2`` look nonlinear (or unknown) though each is affine in ``x`` once the
constants are known. Here a *run* — pointwise ops joined by values that depend on the
image — is written as one sympy expression of the values that enter it: the varying ones
are the variables, constants (parameters, buffers, scalars) are symbols. At a node where
values leave the run (an *outlet*), the expression decides:

* jointly affine in every variable: ``Step.LINEAR``, one piece per variable with the
  coefficient as its slope, plus the constant part as a bias;
* affine in some variables once the others are frozen at their actual values, with a
  constant part free of variables: ``Step.MIXING`` (one carried variable, like a gated
  product) or ``Step.NORM`` (several, like a norm written by hand with frozen statistics).

Each op's form comes from its rule (``Rule.sympy``), so this pass holds no op table and an
op registered with ``register_rule`` takes part once its rule gives a form. Slopes and offsets
are read from the expression and evaluated at run time by :func:`fxdecomp.kernels.pointwise`,
with the torch functions the forms name (``kernels.POINTWISE_FUNCTIONS``). An outlet the op rules already walk through (no
nonlinear or unknown op between its variables and it) keeps its rules; a new
combination of pointwise ops needs no new rule.
"""
from __future__ import annotations

import math

import sympy
import torch.fx as fx

from .. import kernels
from ..core.ir import is_varying
from ..core.step import Step
from ..core.terms import Derived, Factor, Linearization, NodeValue, Piece
from ..rules.base import Rule, bound_args
from ..rules.registry import rule_for

def _form(node: fx.Node):
    """The op's symbolic form, as its rule gives it (``Rule.sympy``; None: it has none)."""
    if node.op != "call_function":
        return None
    rule = rule_for(node.target)
    return rule.sympy(node) if rule is not None else None


def _args(node: fx.Node, names) -> dict:
    if hasattr(node.target, "_schema"):
        return bound_args(node)
    return dict(zip(names, node.args))


def is_pointwise(node: fx.Node) -> bool:
    """Whether the op has a symbolic form (and keeps its input's dtype class)."""
    return _form(node) is not None


# -- the run ------------------------------------------------------------------------------------

class Run:
    """Sympy expressions of the pointwise nodes of one graph, in the values that enter them."""

    def __init__(self, flow: dict):
        self.flow = flow
        self.expr: dict = {}         # node -> sympy expression (None: not expressible)
        self.symbol: dict = {}       # entering value (node) -> its symbol
        self.value_of: dict = {}     # symbol -> entering node
        self.variables: dict = {}    # node -> variables of its expression (entering varying nodes)

    def _sym(self, node: fx.Node) -> sympy.Symbol:
        s = self.symbol.get(node)
        if s is None:
            s = self.symbol[node] = sympy.Symbol(f"v{len(self.symbol)}")
            self.value_of[s] = node
        return s

    def _operand(self, x, member):
        if isinstance(x, fx.Node):
            if member(x) and self.expr.get(x) is not None:
                return self.expr[x]
            return self._sym(x)
        if isinstance(x, bool):
            return sympy.Integer(int(x))
        if isinstance(x, int):
            return sympy.Integer(x)
        if isinstance(x, float):
            if not math.isfinite(x):
                return None
            return sympy.Integer(int(x)) if x.is_integer() else sympy.Float(x)
        return x  # keyword values such as rounding_mode pass through

    def build(self, node: fx.Node, member) -> sympy.Expr | None:
        """The expression of ``node``; ``member(x)``: whether ``x`` belongs to the run."""
        form = _form(node)
        raw = _args(node, form.operands)
        vals = {}
        for k, v in raw.items():
            if k in form.operands:
                o = self._operand(v, member)
                if o is None and v is not None:
                    self.expr[node] = None
                    return None
                vals[k] = o if o is not None else v
            else:
                vals[k] = v
        try:
            e = form.build(vals)
        except (TypeError, ValueError):
            e = None
        self.expr[node] = e
        if e is not None:
            self.variables[node] = {self.value_of[s] for s in e.free_symbols
                                    if is_varying(self.flow, self.value_of[s])}
        return e


def nonpolynomial(expr) -> set:
    """Symbols that appear in ``expr`` other than as a polynomial: under a function, in a
    denominator or under a fractional power."""
    out: set = set()

    def walk(e):
        if e.is_Symbol or e.is_Number:
            return
        if e.is_Pow:
            base, exp = e.args
            if exp.is_Integer and exp >= 0:
                walk(base)
            else:
                out.update(e.free_symbols)
            return
        if e.is_Add or e.is_Mul:
            for a in e.args:
                walk(a)
            return
        out.update(e.free_symbols)

    walk(expr)
    return out


class PointwiseRule(Rule):
    """The rule for one outlet, read from its expression (see the module docstring)."""

    def __init__(self, outlet: fx.Node, step: Step, slopes: dict, offset, run: Run):
        self.outlet, self.step, self.slopes, self.offset, self.run = outlet, step, slopes, offset, run

    def classify(self, node, varying) -> str:
        return self.step

    def carriable(self, node):
        return list(self.slopes)

    def inputs(self) -> list:
        """Every value the outlet's expression reads that depends on the image."""
        return sorted(self.run.variables[self.outlet], key=lambda n: n.name)

    def _source(self, expr, name: str):
        program, nodes = _program(expr, self.run)
        return Derived(kernels.pointwise, (program, NodeValue(self.outlet)) + tuple(NodeValue(n) for n in nodes),
                       name)

    def linearize(self, node, ctx, carried=None) -> Linearization:
        axes = tuple(ctx.axes(node))
        pieces = []
        for x, slope in self.slopes.items():
            f = Factor(self._source(slope, f"slope_{node.name}_{x.name}"), axes)
            pieces.append(Piece(arg=x, factors=[f], passthrough=frozenset(ctx.atoms(x))))
        if self.offset != 0:
            f = Factor(self._source(self.offset, f"offset_{node.name}"), axes)
            pieces.append(Piece(const=f, passthrough=frozenset(ctx.atoms(node))))
        return Linearization(pieces)


def _program(expr, run: Run) -> tuple[tuple, list]:
    """``expr`` as a nested tuple over numbered inputs, and the nodes those inputs are."""
    nodes: list = []
    index: dict = {}

    def enc(e):
        if e.is_Symbol:
            n = run.value_of[e]
            if n not in index:
                index[n] = len(nodes)
                nodes.append(n)
            return ("arg", index[n])
        if e.is_Number:
            return ("num", float(e))
        if e.is_Add:
            return ("add",) + tuple(enc(a) for a in e.args)
        if e.is_Mul:
            return ("mul",) + tuple(enc(a) for a in e.args)
        if e.is_Pow:
            return ("pow", enc(e.args[0]), enc(e.args[1]))
        name = type(e).__name__
        return ("fn", name) + tuple(enc(a) for a in e.args)

    return enc(expr), nodes


def _evaluable(expr) -> bool:
    """Every function in ``expr`` is one :func:`fxdecomp.kernels.pointwise` can evaluate."""
    return all(type(f).__name__ in kernels.POINTWISE_FUNCTIONS for f in expr.atoms(sympy.Function))


def classify_outlet(node: fx.Node, run: Run, depth: dict, atoms) -> PointwiseRule | None:
    """A rule for ``node`` from its expression, or None when it is not affine in anything
    the walk could carry (then the op rules decide)."""
    expr = run.expr.get(node)
    if expr is None or expr.has(sympy.zoo, sympy.oo, sympy.nan, -sympy.oo):
        return None
    variables = run.variables[node]
    if not variables:
        return None
    syms = {run.symbol[v]: v for v in variables}
    bad = nonpolynomial(expr)
    carried = sorted((s for s in syms if s not in bad), key=lambda s: (depth.get(syms[s], 0), syms[s].name))
    while carried:
        poly = expr.as_poly(*carried)
        if poly is not None and poly.total_degree() <= 1:
            break
        carried.pop()  # the deepest: frozen, as in a product of two varying operands
    if not carried:
        return None
    # what is left with every carried variable at 0: constants, scaled by frozen values where
    # they pass a frozen statistic or gate (as a bias through a norm is), is a bias
    offset = poly.as_expr().subs({s: 0 for s in carried})
    frozen = set(syms) - set(carried)
    in_slopes = set().union(*(poly.coeff_monomial(s).free_symbols for s in carried))
    if frozen - in_slopes:
        return None  # a value that varies with the image but scales nothing carried: not a bias
    out_atoms = set(atoms(node))
    if any(not set(atoms(syms[s])) <= out_atoms for s in carried):
        return None  # a variable whose axes are regrouped on the way: left to the op rules
    slopes = {syms[s]: poly.coeff_monomial(s) for s in carried}
    if not all(_evaluable(e) for e in (offset, *slopes.values())):
        return None
    step = Step.LINEAR if not frozen else (Step.MIXING if len(carried) == 1 else Step.NORM)
    return PointwiseRule(node, step, slopes, offset, run)


def pointwise_rules(order: list, flow: dict, stream, step_of, depth: dict, atoms) -> dict:
    """``{outlet: PointwiseRule}`` for the outlets the op rules cannot walk through.

    ``order``: the varying nodes in forward order; ``step_of(node)``: the op rules' answer
    (a Step). A stream node is always
    an outlet: what enters a later run through it is read as a value, never inlined."""
    graph = stream.graph
    members = [n for n in order if is_pointwise(n)]
    if not any(step_of(n) in (Step.NONLINEAR, Step.UNKNOWN) for n in members):
        return {}
    member_set = set(members)
    # runs: pointwise nodes joined by edges between them (union-find)
    parent = {n: n for n in members}

    def find(n):
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in members:
        for a in n.all_input_nodes:
            if a in member_set:
                parent[find(a)] = find(n)
    blocked = {find(n) for n in members if step_of(n) in (Step.NONLINEAR, Step.UNKNOWN)}
    run = Run(flow)
    rules: dict = {}
    outlets: set = set()  # their values are needed anyway: later expressions read them as values
    for n in members:  # forward order: operands first
        if find(n) not in blocked:
            continue
        run.build(n, lambda x: x in member_set and find(x) is find(n) and x not in outlets)
        if n not in stream and not any(u not in member_set for u in n.users if u in graph or u.op == "output"):
            continue
        outlets.add(n)
        if _needs_symbolic(n, lambda x: x in member_set and x not in outlets, step_of, depth, flow):
            rule = classify_outlet(n, run, depth, atoms)
            if rule is not None:
                rules[n] = rule
    return rules


def _needs_symbolic(node, inside, step_of, depth: dict, flow: dict) -> bool:
    """Whether the op rules' walk from the outlet back through the run meets an op it cannot
    walk through (nonlinear or unknown). It follows what the walk would carry: every
    varying operand of a linear op, the shallowest one of a product, a norm's input."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        step = step_of(n)
        if step in (Step.NONLINEAR, Step.UNKNOWN):
            return True
        carried = [a for a in n.all_input_nodes if is_varying(flow, a)]
        if step in (Step.MIXING, Step.NORM):
            rule = rule_for(n.target)
            options = [a for a in rule.carriable(n) if is_varying(flow, a)] if rule is not None else []
            if not options:
                return True
            if step == Step.NORM:
                carried = options[:1]
            else:
                best = min(depth.get(a, 0) for a in options)
                carried = [[a for a in options if depth.get(a, 0) == best][-1]]
        todo.extend(a for a in carried if inside(a))
    return False
