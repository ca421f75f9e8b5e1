"""Any PyTorch classifier as the :class:`~reprlab.models.Classifier` the studies take: :func:`wrap`.

``wrap(torchvision.models.resnet18(num_classes=10), input_shape=(3, 32, 32))`` gives a model with
named taps, cuts and a representation, so CKA, stitching, STIR, inversion and the attacks run on
it as on reprlab's own networks. The module is shared, not copied: its parameters are the wrapped
model's (under ``net.``, with the module's own state_dict keys).

How the taps are found. The module's forward is traced with torch.fx through torchvision's
feature-extraction tracer (the tracer behind ``get_graph_node_names`` and
``create_feature_extractor``), so every operation is a node with torchvision's name. Then:

* **layer taps** are the outputs of every call of a conv, BatchNorm, ReLU, pooling or linear
  module, named as on reprlab's own models (``layer1.0.conv1``; ``layer1.0.relu@2`` for the
  second call of a reused module): :func:`~reprlab.models.select_taps`'s ``"all"``;
* **block taps** are the points where the network can be cut: a node whose output is the ONLY
  value the rest of the forward pass needs (besides parameters). A node inside a residual
  branch is not one (the skip input is still needed); a block's output is. A block tap is named
  after the innermost non-leaf module that returns it (``layer2.1``), else the module it is the
  output of (``conv1``), else its torchvision node name (``flatten``); the last is ``logits``.
  The graph is split there into one generated function per stage, run on the wrapped net, so
  ``front``/``back``/``between`` cost what the same part of the forward pass costs;
* the **representation** is the input of the last ``nn.Linear`` called (``flatten`` for a
  torchvision ResNet), unless ``representation=`` names another tap.

A tap that is an operation rather than a module output (``flatten``, ``layer1.0.add``) is given
an ``nn.Identity`` in the graph so that forward hooks see it as every other tap, and every stage
opens with one (what counts a module's calls within a stage, such as ``fake_relu``, resets on
it). They hold no parameters or buffers: the state_dict is unchanged.

Where tracing fails (data-dependent control flow) or gives different graphs in train and eval
mode, forward hooks take over: the layer taps are hooked module outputs, the one cut is at the
representation (the last ``nn.Linear``'s input, which must give the logits), and the block taps
are ``representation`` and ``logits``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from reprlab.errors import ReprlabError
from reprlab.models.base import Classifier, Normalize, Stage
from reprlab.models.probe import CALL_SEP, Probe, TapInfo, is_layer

__all__ = ["WrappedClassifier", "wrap"]

LOGITS = "logits"
HOOKED_REPRESENTATION = "representation"
"""Name of the representation tap of a model wrapped with hooks (the last Linear's input)."""

SIZES = (32, 28, 64, 96, 224)
"""Image sides tried (square, in this order) when ``input_shape`` is not given."""

_TAP_MODULES = "reprlab_taps"
"""Where the ``nn.Identity`` of each operation tap lives in the wrapped ``net``."""

Program = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""One stage of a traced model: ``program(net, h)`` runs that part of the graph on ``net``."""


class WrappedClassifier(Classifier):
    """A :class:`Classifier` around any module: stages are parts of its traced graph (or, hooked,
    the forward up to the last Linear's input and the Linear). Built by :func:`wrap`.

    Taps and cuts behave as on reprlab's own models; block taps may also be layer taps (a stem
    convolution where nothing else is live is both). ``front``/``back`` at a tap that cannot be
    cut raise a one-line :class:`~reprlab.errors.ReprlabError` saying what is still live there.
    """

    def __init__(
        self,
        name: str,
        net: nn.Module,
        normalize: Normalize,
        *,
        stages: Sequence[Stage],
        programs: Sequence[Program],
        representation: str,
        input_shape: tuple[int, ...],
        probe: Probe,
        layer_names: Sequence[str],
        live: dict[str, list[str]],
        traced: bool,
    ) -> None:
        nn.Module.__init__(self)  # the stages are programs, not module sequences: no Body
        self.arch = name
        self.normalize = normalize
        self.net = net
        self.stages = tuple((tap, tuple(paths)) for tap, paths in stages)
        self.representation_tap = representation
        self.input_shape = tuple(input_shape)
        self.traced = traced
        """True when the graph was traced (cuts at every block tap); False when hooked."""
        self._programs = list(programs)  # plain functions of (net, h): deepcopy keeps them
        self._stage_modules: list[list[nn.Module]] = []
        self._stage_index = {tap: index for index, (tap, _) in enumerate(self.stages)}
        self._probe: Probe | None = probe
        self._layer_names = frozenset(layer_names)
        self._live = dict(live)

    @property
    def layer_taps(self) -> tuple[str, ...]:
        """The taps ``"all"`` selects, forward order: every conv, BatchNorm, ReLU, pooling and
        linear output (or, with ``wrap(taps=[...])``, the taps listed)."""
        return tuple(t.name for t in self.probe().taps if t.name in self._layer_names)

    def probe(self) -> Probe:
        """Every tap in forward order with module, call, stage and shape (found by :func:`wrap`)."""
        assert self._probe is not None
        return self._probe

    def _run(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for program in self._programs[start:stop]:
            h = program(self.net, h)
        return h

    def _split_index(self, tap: str) -> int:
        index = self._stage_index.get(tap)
        if index is None:
            live = self._live.get(tap)
            why = (
                f" ({', '.join(live)} still needed there: a skip connection or another branch)"
                if live
                else ""
            )
            raise ReprlabError(
                f"{self.arch} cannot be cut at '{tap}'{why}; cut at a block tap: "
                f"{', '.join(self.block_taps)}"
            )
        return index


def wrap(
    module: nn.Module,
    taps: str | Sequence[str] = "all",
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    input_shape: Sequence[int] | None = None,
    representation: str | None = None,
    name: str | None = None,
) -> WrappedClassifier:
    """``module`` (any classifier returning logits [n, classes]) as a reprlab Classifier.

    Parameters
    ----------
    module:
        The network, shared (not copied). Its forward takes one image batch [n, c, h, w].
    taps:
        ``"all"``: every layer tap and every block tap (see the module docstring). A list of
        names: only these taps (as given: a layer or block tap name, a torchvision node name from
        ``get_graph_node_names``, or a module path for that module's output), plus the
        representation and ``logits``; the ones that can be cut are block taps.
    normalize:
        ``None`` when ``module`` takes pixels in [0, 1]; ``(mean, std)`` (one value per channel)
        when it takes normalised input: the wrapped model then normalises pixels first, so
        attack budgets and inversions stay in pixel units.
    input_shape:
        ``(channels, height, width)`` of one image. Default: the module's timm ``pretrained_cfg``
        ``input_size``, else the one size among 32, 28, 64, 96, 224 pixels it runs on (with the
        first convolution's channels, else normalize's, else 1 or 3); a module that runs on
        several sizes needs it given.
    representation:
        The tap that is the representation (STIR, inversion, the pooled features); default the
        input of the last ``nn.Linear``.
    name:
        Shown in messages and plots; default the module's class name.

    The wrapped model starts in the module's train/eval mode. Raises
    :class:`~reprlab.errors.ReprlabError` (one line) when the module cannot be wrapped as asked.
    """
    if not isinstance(module, nn.Module):
        raise ReprlabError(f"wrap takes a torch.nn.Module, got {type(module).__name__}")
    name = name or type(module).__name__
    mean, std = _normaliser(normalize, name)
    shape = _input_shape(module, input_shape, name, channels=None if mean is None else len(mean))
    channels = shape[0]
    if mean is None:
        mean, std = [0.0] * channels, [1.0] * channels
    elif len(mean) != channels:
        raise ReprlabError(
            f"normalize has {len(mean)} values per statistic but {name} takes {channels} "
            "channels; give one mean and one std per channel"
        )
    normaliser = Normalize(mean, std)
    try:
        graph_module, tracer = _trace(module)
    except _Untraceable as reason:
        model = _hooked(module, name, normaliser, shape, taps, representation, str(reason))
    else:
        model = _traced(graph_module, tracer, name, normaliser, shape, taps, representation)
    model.training = model.net.training = model.normalize.training = module.training
    return model


# --- arguments ---------------------------------------------------------------------------------


def _normaliser(
    normalize: tuple[Sequence[float], Sequence[float]] | None, name: str
) -> tuple[list[float] | None, list[float] | None]:
    if normalize is None:
        return None, None
    try:
        mean, std = ([float(v) for v in values] for values in normalize)
    except (TypeError, ValueError):
        raise ReprlabError(
            f"normalize must be None or (mean, std), one value per channel, got {normalize!r}"
        ) from None
    if len(mean) != len(std) or not mean:
        raise ReprlabError(f"normalize needs as many mean as std values, got {mean} and {std}")
    if any(s <= 0 for s in std):
        raise ReprlabError(f"normalize: std must be positive, got {std}")
    return mean, std


def _runs(module: nn.Module, shape: tuple[int, ...]) -> str | None:
    """None when ``module`` maps 2 images of ``shape`` to logits [2, k]; else why not."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        with _eval_no_grad(module):
            out = module(torch.zeros(2, *shape, device=device))
    except Exception as error:  # any failure means: not this shape
        return _first_line(error)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        kind = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"its output is {kind}, not logits [n, classes]"
    return None


def _input_shape(
    module: nn.Module, given: Sequence[int] | None, name: str, *, channels: int | None
) -> tuple[int, int, int]:
    if given is not None:
        shape = tuple(given)
        if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ReprlabError(f"input_shape must be (channels, height, width), got {given!r}")
        return shape  # type: ignore[return-value]  (the probe pass checks that it runs)
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None)
    if isinstance(cfg, dict) and len(cfg.get("input_size", ())) == 3:
        return _input_shape(module, tuple(int(d) for d in cfg["input_size"]), name, channels=None)
    first = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None:
        channel_options: tuple[int, ...] = (first.in_channels,)
    else:
        channel_options = (1, 3) if channels is None else (channels,)
    fits = [(c, s, s) for c in channel_options for s in SIZES if _runs(module, (c, s, s)) is None]
    if len(fits) == 1:
        return fits[0]
    shown = ", ".join("x".join(map(str, s)) for s in fits)
    if fits:
        raise ReprlabError(
            f"{name} runs on several input sizes ({shown}); pass input_shape=(c, h, w), "
            "e.g. (3, 32, 32) for CIFAR or (3, 224, 224) for ImageNet"
        )
    raise ReprlabError(
        f"{name} runs on none of the usual input sizes; pass input_shape=(channels, height, width)"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _eval_no_grad:
    """Eval mode and no_grad for the block; every submodule's own train flag restored."""

    def __init__(self, module: nn.Module) -> None:
        self.flags = [(m, m.training) for m in module.modules()]
        self.module = module
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.module.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self.no_grad.__exit__(*exc_info)
        for m, training in self.flags:
            m.training = training


# --- tracing -----------------------------------------------------------------------------------


class _Untraceable(Exception):
    """torch.fx cannot give one graph for the module; the message says why."""


def _trace(module: nn.Module) -> tuple[fx.GraphModule, Any]:
    """The module's eval-mode graph (torchvision's tracer and node names) and the tracer."""
    # Imported here: torchvision takes about 2 s to import.
    from torchvision.models.feature_extraction import NodePathTracer

    class Tracer(NodePathTracer):
        """Also records, per node, the module calls that return it (innermost first)."""

        def __init__(self) -> None:
            super().__init__()
            self.returned_by: dict[fx.Node, list[tuple[str, int]]] = {}
            self.module_calls: dict[str, int] = {}

        def call_module(self, m, forward, args, kwargs):
            path = self.path_of_module(m)
            calls = self.module_calls[path] = self.module_calls.get(path, 0) + 1
            out = super().call_module(m, forward, args, kwargs)
            if isinstance(out, fx.Proxy) and path:
                self.returned_by.setdefault(out.node, []).append((path, calls))
            return out

    concrete = {}
    parameters = list(inspect.signature(module.forward).parameters.values())[1:]
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is inspect.Parameter.empty:
            raise _Untraceable(f"its forward takes a second input '{parameter.name}'")
        concrete[parameter.name] = parameter.default
    graphs = {}
    flags = [(m, m.training) for m in module.modules()]
    try:
        for training in (True, False):
            module.train(training)
            tracer = Tracer()
            try:
                graph = tracer.trace(module, concrete_args=concrete or None)
            except Exception as error:
                raise _Untraceable(f"{type(error).__name__}: {_first_line(error)}") from None
            graphs[training] = (graph, tracer)
    finally:
        for m, training in flags:
            m.training = training
    signature = {
        mode: [(n.op, str(n.target)) for n in graph.nodes] for mode, (graph, _) in graphs.items()
    }
    if signature[True] != signature[False]:
        raise _Untraceable("its graph differs between train and eval mode")
    graph, tracer = graphs[False]
    return fx.GraphModule(tracer.root, graph, type(module).__name__), tracer


class _Values(fx.Interpreter):
    """Records each node's per-example shape (None: not a batched tensor) on one run."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        batched = isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[0] == 2
        self.shapes[n] = tuple(out.shape[1:]) if batched else None
        return out


@dataclass
class _Tap:
    """A tap of the traced graph being built: its name and whether it is a block or layer tap."""

    name: str
    node: fx.Node
    block: bool
    layer: bool


def _traced(
    gm: fx.GraphModule,
    tracer: Any,
    name: str,
    normaliser: Normalize,
    shape: tuple[int, int, int],
    taps: str | Sequence[str],
    representation: str | None,
) -> WrappedClassifier:
    graph = gm.graph
    recorder = _Values(gm)
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    try:
        with _eval_no_grad(gm):
            recorder.run(normaliser.to(device)(torch.zeros(2, *shape, device=device)))
    except Exception as error:
        raise ReprlabError(
            f"{name} does not run on input_shape {shape}: {_first_line(error)}"
        ) from None
    shapes = recorder.shapes
    nodes = list(graph.nodes)
    output = nodes[-1]
    logits_node = output.args[0]
    if not isinstance(logits_node, fx.Node) or len(shapes.get(logits_node) or ()) != 1:
        raise ReprlabError(f"{name} must return logits [n, classes] for wrap to use it")

    # Liveness: after node i, which earlier values does the rest of the pass still need?
    position = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((position[u] for u in n.users), default=position[n]) for n in nodes}
    live: set[fx.Node] = set()
    others: dict[fx.Node, list[fx.Node]] = {}
    for i, node in enumerate(nodes):
        if node.op != "get_attr" and last_use[node] > i:
            live.add(node)
        live = {n for n in live if last_use[n] > i}
        others[node] = sorted((n for n in live if n is not node), key=position.__getitem__)
    cuttable = {
        n
        for n in nodes
        if n.op not in ("placeholder", "get_attr", "output")
        and shapes.get(n) is not None
        and not others[n]
    }

    # Names: layer taps as on reprlab's own models, block taps after the module returning them.
    calls: dict[str, int] = {}
    call_of: dict[fx.Node, int] = {}
    for node in nodes:
        if node.op == "call_module":
            call_of[node] = calls[node.target] = calls.get(node.target, 0) + 1

    def call_name(path: str, call: int, total: int) -> str:
        return path if total == 1 else f"{path}{CALL_SEP}{call}"

    layer_name = {
        n: call_name(n.target, call_of[n], calls[n.target])
        for n in nodes
        if n.op == "call_module" and is_layer(gm.get_submodule(n.target))
    }
    qualname = {n: q for n, q in tracer.node_to_qualname.items() if n.op not in ("placeholder",)}

    def block_name(node: fx.Node) -> str:
        if node is logits_node:
            return LOGITS
        for path, call in tracer.returned_by.get(node, []):
            leaf = node.op == "call_module" and path == node.target
            if not leaf:
                return call_name(path, call, tracer.module_calls[path])
        if node.op == "call_module":
            return call_name(node.target, call_of[node], calls[node.target])
        return qualname[node]

    blocks = {n: block_name(n) for n in nodes if n in cuttable}
    taken = set(layer_name.values()) | {LOGITS}
    for node, tap in blocks.items():  # a block name may repeat a layer name only for its node
        if tap in taken and layer_name.get(node) != tap and node is not logits_node:
            blocks[node] = qualname[node]

    # Every name a user may give for a node: ours, torchvision's, the returning modules'.
    lookup: dict[str, fx.Node] = {}
    for node, paths in tracer.returned_by.items():
        for path, call in paths:
            lookup.setdefault(call_name(path, call, tracer.module_calls[path]), node)
    for node, q in qualname.items():
        lookup.setdefault(q, node)
    lookup.update({tap: node for node, tap in layer_name.items()})
    lookup.update({tap: node for node, tap in blocks.items()})

    # Representation: the input of the last Linear called, unless named.
    if representation is None:
        linears = [
            n
            for n in nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Linear)
        ]
        if not linears or not isinstance(linears[-1].args[0], fx.Node):
            raise ReprlabError(
                f"{name} calls no nn.Linear, so its representation is unknown; pass "
                "representation=<tap name>"
            )
        rep_node = linears[-1].args[0]
        rep_name = blocks.get(rep_node) or layer_name.get(rep_node) or qualname[rep_node]
    else:
        if representation not in lookup:
            raise _unknown(name, [representation], lookup)
        rep_node, rep_name = lookup[representation], representation
    if shapes.get(rep_node) is None:
        raise ReprlabError(f"{name}: the representation '{rep_name}' is not an activation")

    # The taps asked for.
    chosen: dict[fx.Node, list[_Tap]] = {}

    def add(tap: str, node: fx.Node, *, block: bool, layer: bool) -> None:
        for existing in chosen.get(node, []):
            if existing.block == block or existing.name == tap:
                existing.layer = existing.layer or layer
                return
        chosen.setdefault(node, []).append(_Tap(tap, node, block, layer))

    if isinstance(taps, str):
        if taps != "all":
            raise ReprlabError(f"taps must be 'all' or a list of tap names, got '{taps}'")
        for node, tap in layer_name.items():
            if position[node] < position[logits_node] or node is logits_node:
                add(tap, node, block=blocks.get(node) == tap, layer=True)
        for node, tap in blocks.items():
            add(tap, node, block=True, layer=False)
    else:
        names = list(taps)
        unknown = [tap for tap in names if tap not in lookup]
        if unknown:
            raise _unknown(name, unknown, lookup)
        repeated = sorted({tap for tap in names if names.count(tap) > 1})
        if repeated:
            raise ReprlabError(
                f"tap(s) {', '.join(repeated)} listed more than once; list each once"
            )
        by_node: dict[fx.Node, str] = {}
        for tap in names:
            node = lookup[tap]
            if node in by_node:
                raise ReprlabError(
                    f"taps '{by_node[node]}' and '{tap}' of {name} are the same activation; "
                    "list one of them"
                )
            by_node[node] = tap
            block = node in cuttable and (node is not logits_node or tap == LOGITS)
            add(tap, node, block=block, layer=True)
        if by_node.get(logits_node) != LOGITS:
            add(LOGITS, logits_node, block=True, layer=False)
    if not any(t.name == rep_name for t in chosen.get(rep_node, [])):
        add(rep_name, rep_node, block=rep_node in cuttable, layer=False)

    # Every tap a module output: an nn.Identity after each operation tap.
    identities = nn.Module()
    gm.add_submodule(_TAP_MODULES, identities)
    for node in [n for n in nodes if n in chosen and n.op != "call_module"]:
        key = f"t{len(identities._modules)}"
        identities.add_module(key, nn.Identity())
        with graph.inserting_after(node):
            identity = graph.call_module(f"{_TAP_MODULES}.{key}", (node,))
        node.replace_all_uses_with(identity, delete_user_cb=lambda user, i=identity: user is not i)
        for tap in chosen[node]:
            tap.node = identity
        chosen[identity] = chosen.pop(node)
        shapes[identity] = shapes[node]
        others[identity] = others[node]
        if node in cuttable:
            cuttable.add(identity)
    graph.lint()
    gm.recompile()

    # Stages: the graph cut at each block tap, each part a generated function of (net, h) that
    # opens with its own nn.Identity (hooks that count calls within a stage reset on it).
    nodes = list(graph.nodes)
    ends = [(n, t.name) for n in nodes if n in chosen for t in chosen[n] if t.block]
    stages: list[Stage] = []
    programs: list[Program] = []
    stage_of: dict[fx.Node, int] = {}
    start = nodes[0]
    begin = 1
    for index, (end, tap) in enumerate(ends):
        stop = nodes.index(end) + 1
        part = nodes[begin:stop]
        entry = f"stage{index}"
        identities.add_module(entry, nn.Identity())
        entry = f"{_TAP_MODULES}.{entry}"
        programs.append(_program(part, start, end, entry, f"{name}:{tap}"))
        paths = [entry] + [n.target for n in part if n.op == "call_module"]
        stages.append((tap, tuple(dict.fromkeys(paths))))
        for n in part:
            stage_of[n] = index
        start, begin = end, stop

    # The probe: every tap in forward order with its module, call, stage and shape.
    infos: list[TapInfo] = []
    module_stages: dict[str, list[int]] = {}
    call_number: dict[fx.Node, int] = {}
    for node in nodes:
        if node.op == "call_module" and node in stage_of:
            module_stages.setdefault(node.target, []).append(stage_of[node])
            call_number[node] = len(module_stages[node.target])
    for node in nodes:
        for tap in sorted(chosen.get(node, []), key=lambda t: t.block):
            kind = "block" if tap.block else "layer"
            info = (tap.name, kind, node.target, call_number[node], stage_of[node], shapes[node])
            infos.append(TapInfo(*info))
    probe = Probe(taps=tuple(infos), calls={p: tuple(s) for p, s in module_stages.items()})
    layer_names = [t.name for ts in chosen.values() for t in ts if t.layer]
    live = {
        t.name: [qualname.get(n, n.name) for n in others[node]]
        for node, ts in chosen.items()
        for t in ts
        if not t.block
    }
    return WrappedClassifier(
        name,
        gm,
        normaliser,
        stages=stages,
        programs=programs,
        representation=rep_name,
        input_shape=shape,
        probe=probe,
        layer_names=layer_names,
        live=live,
        traced=True,
    )


def _unknown(name: str, unknown: Sequence[str], lookup: dict[str, fx.Node]) -> ReprlabError:
    sample = ", ".join(list(lookup)[:12])
    return ReprlabError(
        f"unknown tap(s) {', '.join(unknown)} for {name}; name a module, a layer or block tap or "
        f"a torchvision node name (get_graph_node_names), e.g. {sample}, ..."
    )


def _program(
    part: Sequence[fx.Node], start: fx.Node, end: fx.Node, entry: str, label: str
) -> Program:
    """``program(net, h)``: the nodes ``part`` of a graph on ``net``, from the value of
    ``start`` (``h``, passed through ``net``'s module ``entry`` first) to the value of ``end``;
    attributes are read from ``net`` at each call."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: graph.call_module(entry, (graph.placeholder("h"),))}

    def value(n: fx.Node) -> fx.Node:
        if n not in env:
            if n.op != "get_attr":
                raise AssertionError(f"{label}: {n} is live across the cut")
            env[n] = graph.get_attr(n.target)
        return env[n]

    for node in part:
        if node.op != "get_attr":
            env[node] = graph.node_copy(node, value)
    graph.output(env[end])
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<wrap {label}>", "exec"), namespace)  # fx's own generated code
    return namespace["forward"]


# --- hooks, where tracing fails ------------------------------------------------------------------


class _Stop(Exception):
    """Ends a forward pass at the representation (raised by a pre-hook on the last Linear)."""

    def __init__(self, h: torch.Tensor) -> None:
        super().__init__()
        self.h = h


def _hooked(
    module: nn.Module,
    name: str,
    normaliser: Normalize,
    shape: tuple[int, int, int],
    taps: str | Sequence[str],
    representation: str | None,
    reason: str,
) -> WrappedClassifier:
    """Hooks instead of a graph: stage 0 runs ``module`` up to its last Linear's input, stage 1
    the Linear (it must give the logits)."""
    if representation is not None:
        raise ReprlabError(
            f"{name} cannot be traced by torch.fx ({reason}), so representation= cannot be "
            "chosen; leave it out (the last Linear's input is used)"
        )
    paths = {m: p for p, m in module.named_modules()}
    order: list[tuple[str, nn.Module, Any, Any]] = []  # (path, module, input, output) per call

    def hook(m, inputs, out):
        order.append((paths[m], m, inputs, out))

    handles = [m.register_forward_hook(hook) for m in paths if next(m.children(), None) is None]
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        with _eval_no_grad(module):
            logits = module(normaliser.to(device)(torch.zeros(2, *shape, device=device)))
    except Exception as error:
        raise ReprlabError(
            f"{name} does not run on input_shape {shape}: {_first_line(error)}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    heads = [(p, m, i, o) for p, m, i, o in order if isinstance(m, nn.Linear)]
    if not heads or heads[-1][3] is not logits:
        raise ReprlabError(
            f"cannot wrap {name}: torch.fx cannot trace it ({reason}) and it does not return its "
            "last nn.Linear's output, so it cannot be cut at the representation"
        )
    head_path, head = heads[-1][0], heads[-1][1]
    if sum(1 for p, *_ in order if p == head_path) != 1:
        raise ReprlabError(f"cannot wrap {name}: its last nn.Linear runs more than once")

    def front(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
        def stop(_module, inputs):
            raise _Stop(inputs[0])

        handle = net.get_submodule(head_path).register_forward_pre_hook(stop)
        try:
            net(h)
        except _Stop as reached:
            return reached.h
        finally:
            handle.remove()
        raise AssertionError(f"{name}: the last Linear did not run")

    def back(net: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return net.get_submodule(head_path)(h)

    before = [(p, m, o) for p, m, _, o in order if m is not head]
    totals: dict[str, int] = {}
    for p, _, _ in before:
        totals[p] = totals.get(p, 0) + 1
    infos, counts, layer_names = [], {}, []
    for p, m, out in before:
        counts[p] = counts.get(p, 0) + 1
        if is_layer(m) and isinstance(out, torch.Tensor):
            tap = p if totals[p] == 1 else f"{p}{CALL_SEP}{counts[p]}"
            infos.append(TapInfo(tap, "layer", p, counts[p], 0, tuple(out.shape[1:])))
            layer_names.append(tap)
    rep_shape = tuple(heads[-1][2][0].shape[1:])
    # The representation is no module's output: call 0 never fires, so a hook on it fails loudly.
    infos.append(TapInfo(HOOKED_REPRESENTATION, "block", head_path, 0, 0, rep_shape))
    infos.append(TapInfo(head_path, "layer", head_path, 1, 1, tuple(logits.shape[1:])))
    infos.append(TapInfo(LOGITS, "block", head_path, 1, 1, tuple(logits.shape[1:])))
    layer_names.append(head_path)
    if not isinstance(taps, str):
        known = {t.name for t in infos}
        unknown = [tap for tap in taps if tap not in known]
        if unknown:
            raise ReprlabError(
                f"unknown tap(s) {', '.join(unknown)} for {name}: torch.fx cannot trace it "
                f"({reason}), so its taps are module outputs: {', '.join(sorted(known))}"
            )
        layer_names = list(taps)
    elif taps != "all":
        raise ReprlabError(f"taps must be 'all' or a list of tap names, got '{taps}'")
    calls: dict[str, list[int]] = {}
    for p, _, _ in before:
        calls.setdefault(p, []).append(0)
    calls[head_path] = [1]
    stage_paths = tuple(dict.fromkeys(p for p, _, _ in before))
    return WrappedClassifier(
        name,
        module,
        normaliser,
        stages=((HOOKED_REPRESENTATION, stage_paths), (LOGITS, (head_path,))),
        programs=(front, back),
        representation=HOOKED_REPRESENTATION,
        input_shape=shape,
        probe=Probe(taps=tuple(infos), calls={p: tuple(s) for p, s in calls.items()}),
        layer_names=layer_names,
        live={},
        traced=False,
    )
