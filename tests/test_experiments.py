"""A campaign's A/B test in YAML (validated with the file, key path and reason) and its arms
(a hash of tenant, campaign and contact: stable, in proportion to the weights)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from policies.experiments import HOLDOUT, ROLLOUT, Experiment, arm_for, unit_interval
from policies.loader import DEFAULT_CONFIG_DIR, PolicyError, load_bundle

IDS = range(1, 100_001)


def _experiment(**changes) -> Experiment:
    base = {"variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}], "holdout": 0.1, "test_fraction": 0.6}
    return Experiment.model_validate(base | changes)


def test_arms_are_stable_across_runs_and_processes_and_independent_per_campaign():
    experiment = _experiment()
    first = [arm_for(experiment, "demo", "bf", i) for i in range(1, 2001)]
    assert first == [arm_for(experiment, "demo", "bf", i) for i in range(1, 2001)]
    # SHA-256 of "demo\x1fbf\x1f1", not Python's per-process salted hash(): the same on every machine.
    assert unit_interval("demo", "bf", 1) == int("f0a3a0c35afc8162", 16) / 2**64
    other = [arm_for(experiment, "demo", "other_campaign", i) for i in range(1, 2001)]
    assert 0.3 < sum(a == b for a, b in zip(first, other, strict=True)) / 2000 < 0.6  # not the same split


def test_arms_follow_the_holdout_test_share_and_weights_on_100k_contacts():
    counts = Counter(arm_for(_experiment(), "demo", "bf", i) for i in IDS)
    shares = {arm: count / len(IDS) for arm, count in counts.items()}
    # Binomial standard error at 100k is at most 0.0016; allow 0.005.
    assert shares == pytest.approx({HOLDOUT: 0.1, "a": 0.15, "b": 0.45, ROLLOUT: 0.3}, abs=0.005)


def test_a_whole_audience_test_has_no_rollout_and_no_holdout():
    counts = Counter(arm_for(_experiment(holdout=0, test_fraction=1), "demo", "bf", i) for i in range(1, 20_001))
    assert set(counts) == {"a", "b"}


def test_the_demo_campaign_tests_two_subject_lines():
    campaign = load_bundle().campaigns["demo"]["black_friday_2026"]
    experiment = campaign.experiment
    assert [v.name for v in experiment.variants] == ["control", "deadline"]
    email = campaign.content_for("email")
    challenger = experiment.content_for("deadline", email)
    assert experiment.content_for("control", email) is email
    # The challenger pins the template's next version: another subject, the same e-mail, in each language.
    template = load_bundle().templates["demo"]["black_friday"]
    control, deadline = (template.version(content.message_template.version).channels["email"] for content in (email, challenger))
    assert set(control) == set(deadline) == {"ru", "en"}
    for language in ("ru", "en"):
        assert deadline[language].subject != control[language].subject
        assert (deadline[language].text, deadline[language].html) == (control[language].text, control[language].html)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, target)
    return target


def _with_experiment(config_dir: Path, **changes) -> None:
    path = config_dir / "campaigns.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    experiment = data["campaigns"][0]["experiment"]
    experiment.update(changes)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


@pytest.mark.parametrize(
    ("changes", "where", "why"),
    [
        ({"variants": [{"name": "only"}]}, "campaigns[0].experiment.variants", "at least 2 items"),
        ({"variants": [{"name": f"v{i}"} for i in range(9)]}, "campaigns[0].experiment.variants", "at most 8 items"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "campaigns[0].experiment.variants", "variant name(s) ['a'] used more than once"),
        ({"variants": [{"name": "a"}, {"name": "holdout"}]}, "campaigns[0].experiment.variants[1].name", "'holdout' names an arm"),
        ({"variants": [{"name": "a", "weight": 0}, {"name": "b"}]}, "campaigns[0].experiment.variants[0].weight", "greater than 0"),
        ({"goal": "opened"}, "campaigns[0].experiment.goal", "goal must be one of delivered, clicked or conversion:<event name>"),
        ({"holdout": 0.5, "test_fraction": 0.6}, "campaigns[0].experiment", "holdout (0.5) + test_fraction (0.6) exceed the whole audience"),
        ({"goal_channel": "sms"}, "campaigns[0]", "experiment.goal_channel: the campaign sends no sms message"),
        ({"looks": 0}, "campaigns[0].experiment.looks", "greater than or equal to 1"),
        ({"alpha": 0.5}, "campaigns[0].experiment.alpha", "less than or equal to 0.2"),
        ({"if_no_winner": "guess"}, "campaigns[0].experiment.if_no_winner", "'send_control' or 'stop'"),
        (
            {"variants": [{"name": "a"}, {"name": "b", "channels": {"email": {"subject": "{{ oops"}}}]},
            "campaigns[0].experiment.variants[1].channels.email",
            "subject: invalid Jinja2 template",
        ),
        (
            {"variants": [{"name": "a"}, {"name": "b", "channels": {"sms": {"text": "hi"}}}]},
            "campaigns[0]",
            "experiment.variants[1].channels.sms: the campaign sends no sms message to vary",
        ),
        (
            {"variants": [{"name": "a"}, {"name": "b", "channels": {"email": {"message_template": {"name": "black_friday", "version": 9}}}}]},
            "campaigns[0].experiment.variants[1].channels.email.message_template",
            "template 'black_friday' has no version 9",
        ),
        (
            {"variants": [{"name": "a"}, {"name": "b", "channels": {"telegram": {"subject": "x"}}}]},
            "campaigns[0]",
            "experiment.variants[1].channels.telegram.subject: `subject` comes from `message_template`; give one or the other",
        ),
    ],
)
def test_a_bad_experiment_names_the_file_the_key_path_and_the_reason(config_dir, changes, where, why):
    _with_experiment(config_dir, **changes)
    with pytest.raises(PolicyError) as caught:
        load_bundle(config_dir)
    lines = str(caught.value).splitlines()
    assert any(line.startswith(f"{config_dir / 'campaigns.yaml'}: {where}: ") and why in line for line in lines), lines


def test_what_each_arm_is_sent_before_and_after_the_verdict():
    from orchestrator_assets.experiments.arms import CampaignArms

    campaign = load_bundle().campaigns["demo"]["black_friday_2026"]
    arms = {1: "control", 2: "deadline", 3: ROLLOUT, 4: HOLDOUT}
    running = CampaignArms(campaign, arms)
    assert [running.variant(c) for c in arms] == ["control", "deadline", None, None]
    plan = {"email": [{"id": c} for c in arms], "telegram": [{"id": 3}]}
    assert running.sent_now(plan) == {"email": [{"id": 1}, {"id": 2}], "telegram": []}
    email = campaign.content_for("email")
    assert [running.content(email, c).message_template.version for c in (1, 2)] == [1, 2]  # control v1, the challenger v2
    won = CampaignArms(campaign, arms, rollout_variant="deadline", concluded=True)
    assert [won.variant(c) for c in arms] == ["deadline", "deadline", "deadline", None]  # the ledger skips those already sent
    stopped = CampaignArms(campaign, arms, rollout_variant=None, concluded=True)
    assert [stopped.variant(c) for c in arms] == ["control", "deadline", None, None]
    assert ("black_friday_2026", ROLLOUT, 1, "nothing (the test ended without a winner)") in stopped.summary()
    assert CampaignArms(load_bundle().campaigns["acme"]["spring_sale_2026"]).variant(99) == ""  # no experiment: as written
