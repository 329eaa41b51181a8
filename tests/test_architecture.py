"""The package's shape, checked on its import graph (grimp, import-linter's engine): no import circles at any
level, the layers only look down - transport -> agent -> streaming -> model (#11), and no transport reads
another transport's module (#21): what they share (the reply-audio sink, keys, the WebSocket helpers) lives
beside them. Imports made only for type checking are left out: they never run."""

import grimp
import pytest

LAYERS = ("higgs_agent.transport", "higgs_agent.agent", "higgs_agent.streaming", "higgs_agent.model")
TRANSPORTS = ("higgs_agent.transport.realtime_ws", "higgs_agent.transport.webrtc", "higgs_agent.transport.phone")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("higgs_agent", cache_dir=None, exclude_type_checking_imports=True)


def test_no_package_or_module_imports_itself_round_a_circle(graph):
    packages = sorted(module for module in graph.modules if graph.find_children(module))
    assert "higgs_agent.streaming" in packages and len(packages) >= 10
    circles = {package: sorted(breakers) for package in packages
               if (breakers := graph.nominate_cycle_breakers(package))}
    assert circles == {}, f"imports to remove to cut the circles: {circles}"


def test_layers_only_import_downwards(graph):
    illegal = graph.find_illegal_dependencies_for_layers(layers=LAYERS)
    assert not illegal, [(d.importer, d.imported, d.routes) for d in illegal]


def transport_crossings(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    crossings = []
    for importer in TRANSPORTS:
        for imported in TRANSPORTS:
            if importer != imported and graph.chain_exists(importer, imported, as_packages=True):
                crossings.append((importer, imported))
    return crossings


def test_no_transport_imports_another(graph):
    assert {"higgs_agent.transport.audio_sink", "higgs_agent.transport.phone.telnyx"} <= set(graph.modules)
    assert transport_crossings(graph) == []


def test_the_transport_check_sees_a_crossing():
    graph = grimp.build_graph("higgs_agent", cache_dir=None, exclude_type_checking_imports=True)
    graph.add_import(importer="higgs_agent.transport.webrtc.sideband", imported="higgs_agent.transport.realtime_ws")
    assert transport_crossings(graph) == [("higgs_agent.transport.webrtc", "higgs_agent.transport.realtime_ws")]


def test_the_circle_check_sees_a_circle():
    """The check itself: an import that closes a circle is found."""
    graph = grimp.build_graph("higgs_agent", cache_dir=None, exclude_type_checking_imports=True)
    graph.add_import(importer="higgs_agent.streaming.scheduler", imported="higgs_agent.streaming.worker")
    assert graph.nominate_cycle_breakers("higgs_agent.streaming")
    graph.add_import(importer="higgs_agent.model.prompts", imported="higgs_agent.agent.session")
    assert graph.find_illegal_dependencies_for_layers(layers=LAYERS)


WIRE_EVENTS = "higgs_agent.protocol.server_events"


def wire_speakers(graph: grimp.ImportGraph) -> list[str]:
    """Modules of the conversation core that import the Realtime wire's events: none may (#21)."""
    return sorted(module for module in graph.find_modules_that_directly_import(WIRE_EVENTS)
                  if module == "higgs_agent.agent" or module.startswith("higgs_agent.agent."))


def test_the_conversation_core_speaks_domain_events_not_the_wire(graph):
    """The session and its reply say what happened as domain events (agent/events.py); the OpenAI Realtime
    protocol is one codec at the edge (transport/realtime_codec.py), the phone lines' serializers beside it."""
    assert "higgs_agent.transport.realtime_codec" in graph.find_modules_that_directly_import(WIRE_EVENTS)
    assert wire_speakers(graph) == []


def test_the_wire_check_sees_a_core_module_that_speaks_the_wire():
    graph = grimp.build_graph("higgs_agent", cache_dir=None, exclude_type_checking_imports=True)
    graph.add_import(importer="higgs_agent.agent.reply", imported=WIRE_EVENTS)
    assert wire_speakers(graph) == ["higgs_agent.agent.reply"]
