"""The city's plan: drawn from the seed alone, shaped by the configured figures."""

from __future__ import annotations

from collections import Counter

from gateway.config import SimulationConfig
from sandbox.simulation.plan import Behaviour, make_plan

OVER = {"anonymous": 1_427_200, "basic": 55_550_000}  # no invoice exceeds the verified tier's limit


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    config = SimulationConfig(residents=400)
    first, again = make_plan(config, over_limit_tiyn=OVER), make_plan(config, over_limit_tiyn=OVER)
    assert first.purchases == again.purchases and first.residents == again.residents
    assert first.reorgs_at == again.reorgs_at and first.node_outages == again.node_outages
    other = make_plan(SimulationConfig(residents=400, seed=7), over_limit_tiyn=OVER)
    assert other.purchases != first.purchases


def test_arrivals_tickets_and_behaviours_follow_the_configured_figures() -> None:
    config = SimulationConfig(residents=5_000)
    plan = make_plan(config, over_limit_tiyn=OVER)
    expected = 5_000 * 0.29
    assert abs(len(plan.purchases) - expected) < 4 * expected**0.5  # Poisson arrivals around 0.29 a day
    by_hour = Counter(p.at_seconds // 3600 for p in plan.purchases)
    assert by_hour[18] > 5 * by_hour[3]  # the evening peak against the night (weights 8 and 0.2)
    normal = [p.price_tiyn for p in plan.purchases if p.behaviour is not Behaviour.OVER_LIMIT]
    mean_kzt = sum(normal) / len(normal) / 100
    assert 4_000 < mean_kzt < 6_800  # around the ~5,300 KZT average terminal ticket
    behaviours = Counter(p.behaviour for p in plan.purchases)
    assert 0.01 < behaviours[Behaviour.ABANDONED] / len(plan.purchases) < 0.06  # configured 0.03
    over = [p for p in plan.purchases if p.behaviour is Behaviour.OVER_LIMIT]
    assert over and all(p.price_tiyn == OVER[plan.residents[p.resident].tier] for p in over)
    steps = Counter((p.resident, p.at_seconds // config.step_seconds) for p in plan.purchases)
    assert max(steps.values()) == 1  # a resident pays at most once per step
    merchants = Counter(m.category for m in plan.merchants)
    assert merchants["grocery"] == 3 and merchants["utilities"] == 1  # 6 and 0.5 per 10,000, at least one
