"""The code's shape, checked: no import cycles between the project's modules (function-local
imports included), short functions in stream/, and Faust's and aiokafka's private API only in
stream/faust_compat.py."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stream", "model", "schemas")
MAX_FUNCTION_LINES = 60
PRIVATE_API_MODULE = "stream.faust_compat"
NOT_FAUST = {"os._exit"}  # private-looking names of other libraries
ATTRIBUTE_CALLS = {"getattr", "setattr", "hasattr"}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that `name` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate:
                targets.add(candidate)
                break
    return targets - {name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_sees_function_local_imports(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    known = {"a", "b"}
    graph = {m: imported(m, tmp_path / f"{m}.py", known) for m in known}
    assert cycles(graph) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["stream", "model", "schemas"])
def test_no_import_cycles(package):
    found = [
        cycle
        for cycle in cycles(import_graph())
        if any(m == package or m.startswith(package + ".") for m in cycle)
    ]
    assert found == []


def test_dependencies_point_one_way_from_the_cli_to_the_model():
    graph = import_graph()
    assert "stream.worker" in graph["stream.app"] and "stream.engine" in graph["stream.worker"]
    for low in ("stream.engine", "stream.progress", "stream.faust_compat"):
        assert not graph[low] & {"stream.app", "stream.worker", "stream.cli", "stream.replay"}
    for name, targets in graph.items():
        if name.startswith(("model", "schemas")):
            assert not any(t.startswith("stream") for t in targets), name
        if name.startswith("schemas"):
            assert not any(t.startswith("model") for t in targets), name


def test_the_engine_and_the_progress_bookkeeping_know_nothing_of_faust():
    for name in ("stream.engine", "stream.progress"):
        tree = ast.parse(modules()[name].read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names]  # fmt: skip
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in ("faust", "aiokafka", "mode")], name


def stream_modules() -> list[tuple[str, ast.Module]]:
    return [
        (name, ast.parse(path.read_text()))
        for name, path in modules().items()
        if name.startswith("stream")
    ]


def test_no_function_in_stream_is_longer_than_sixty_lines():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in stream_modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_private_faust_and_aiokafka_api_is_used_only_in_the_compat_module():
    """No `thing._name` (but self's and cls's own), no getattr of a private name."""
    used = []
    for name, tree in stream_modules():
        if name == PRIVATE_API_MODULE:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = ast.unparse(node.value)
                if owner not in ("self", "cls") and f"{owner}.{node.attr}" not in NOT_FAUST:
                    used.append(f"{name}:{node.lineno} {owner}.{node.attr}")
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in ATTRIBUTE_CALLS:
                attribute = node.args[1] if len(node.args) > 1 else None
                if isinstance(attribute, ast.Constant) and _private(str(attribute.value)):
                    used.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert used == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


CLIENT_MODULE = ROOT / "stream" / "connection.py"
KAFKA_CLIENTS = {  # what connects to a cluster, by the library that provides it
    "kafka": {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "KafkaClient"},
    "aiokafka": {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaClient"},
    "confluent_kafka": {"Producer", "Consumer", "AdminClient", "DeserializingConsumer"},
}


def kafka_clients_made(tree: ast.Module, apps: bool = True) -> list[str]:
    """Kafka clients made (a client class called, imported or reached as an attribute), and
    Faust apps on a Kafka broker made without the connection's credentials: each would
    connect without the cluster's config. Imports alone (type annotations) are fine."""
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
        if alias.name in KAFKA_CLIENTS.get(node.module.split(".")[0], ())
    }
    attributes = set().union(*KAFKA_CLIENTS.values()) - {"Producer", "Consumer", "AdminClient"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Name) and func.id in imported) or (
            isinstance(func, ast.Attribute) and func.attr in attributes
        ):
            found.append(ast.unparse(func))
        elif apps and ast.unparse(func) == "faust.App" and _on_kafka_without_credentials(node):
            found.append("faust.App without broker_credentials")
    return found


def _on_kafka_without_credentials(app: ast.Call) -> bool:
    keywords = {k.arg: k.value for k in app.keywords}
    broker = keywords.get("broker")
    in_memory = isinstance(broker, ast.Constant) and str(broker.value).startswith("memory://")
    splatted = None in keywords  # **settings.faust_options(): credentials included
    return not (in_memory or splatted or "broker_credentials" in keywords)


def test_the_checker_finds_a_client_made_outside_the_connection_module():
    tree = ast.parse(
        "from kafka import KafkaConsumer\nimport aiokafka\nfrom confluent_kafka import Producer\n"
        "def send(producer: Producer): ...\n"  # an annotation makes no client
        "KafkaConsumer('t')\naiokafka.AIOKafkaProducer()\nProducer({})\n"
        "faust.App('x', broker='kafka://h:1')\nfaust.App('y', **options)\n"
        "faust.App('z', broker='memory://')\n"
    )
    assert kafka_clients_made(tree) == [
        "KafkaConsumer", "aiokafka.AIOKafkaProducer", "Producer",
        "faust.App without broker_credentials",
    ]  # fmt: skip


def test_every_kafka_client_is_made_from_the_one_connection_config():
    """stream/connection.py makes every client (with TLS and SASL as configured); anywhere
    else, in the code, the benchmarks or the tests, one would connect without them. (The
    tests' Faust apps are never started: their workers run `currents worker`.)"""
    paths = [
        p for d in ("stream", "bench", "tests", "model") for p in sorted((ROOT / d).rglob("*.py"))
    ]
    made = {
        str(path.relative_to(ROOT)): clients
        for path in paths
        if path != CLIENT_MODULE
        and (
            clients := kafka_clients_made(
                ast.parse(path.read_text()), apps="tests" not in path.relative_to(ROOT).parts
            )
        )
    }
    assert made == {}
