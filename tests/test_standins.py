"""benchmarks/standins.py: its call count is the paper's (BFGS steps + 1) and its network guard refuses a connect."""

import importlib.util
import socket
from pathlib import Path

import pytest
from ase.calculators.emt import EMT

from finetuna_parsl.systems import demo_systems

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "standins.py"


@pytest.fixture(scope="module")
def standins():
    spec = importlib.util.spec_from_file_location("standins_bench", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calls_are_model_evaluations_and_equal_bfgs_steps_plus_one(standins):
    system = demo_systems(count=1, seed=3)[0]
    calc = EMT()
    evaluations = []
    original = EMT.calculate

    def spy(self, *args, **kwargs):
        evaluations.append(1)
        return original(self, *args, **kwargs)

    EMT.calculate = spy
    try:
        record = standins.relax(calc, system, relaxed_positions=None)
    finally:
        EMT.calculate = original
    assert record["converged"] and record["final_fmax"] < standins.FMAX
    assert record["calls"] == len(evaluations) == record["steps"] + 1 > 2
    assert "calculate" not in vars(calc)  # the counting wrapper is removed again


def test_network_guard_refuses_tcp_connect(standins, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", socket.socket.connect)
    monkeypatch.setattr(socket.socket, "connect_ex", socket.socket.connect_ex)
    standins._block_network()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(standins.NetworkUsed):
        sock.connect(("127.0.0.1", 9))
