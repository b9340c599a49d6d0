"""Description (and report layout) to operation."""

from __future__ import annotations

import pytest

from exporter.models import TaskReport
from exporter.operations import OPERATIONS, Classifier, Operation, leak_component_id

RACK_UUID = "22222222-2222-4222-8222-222222222222"
# Flow pads the type to 10 characters (flow/pkg/common/devicetypes/component.go:129-134).
LEAK = "Leak detection: force power-off component tray-ext-17 of type    Compute"


def layout(*stage_types: tuple[str, ...]) -> TaskReport:
    """A report whose stage ``n`` has one pending step per named component type."""
    return TaskReport.parse(
        {
            "version": 1,
            "stages": [
                {
                    "number": number,
                    "status": "pending",
                    "steps": [{"componentType": c, "status": "pending"} for c in types],
                }
                for number, types in enumerate(stage_types, start=1)
            ],
        }
    )


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("API power on Rack", Operation.POWER_ON),
        ("API power on Tray", Operation.POWER_ON),
        ("API power off Tray", Operation.POWER_OFF),
        ("API power off Rack", Operation.POWER_OFF),
        ("API power cycle Rack", Operation.POWER_CYCLE),
        ("API force power off Rack", Operation.FORCE_POWER_OFF),
        ("API force power off Tray", Operation.FORCE_POWER_OFF),
        ("API force power cycle Tray", Operation.FORCE_POWER_CYCLE),
        ("API firmware update Rack", Operation.FIRMWARE_UPDATE),
        ("API firmware update Tray", Operation.FIRMWARE_UPDATE),
        (f"API bring up Rack {RACK_UUID}", Operation.BRING_UP),
        ("API batch bring up Racks", Operation.BRING_UP),
        (LEAK, Operation.LEAK_DETECTION),
        ("Leak detection: force power-off component nvsw-1 of type   NVSwitch", Operation.LEAK_DETECTION),
    ],
)
def test_every_description_a_rest_handler_or_leak_detection_writes(
    description: str, expected: Operation
) -> None:
    """Expected values: the REST handlers' and Flow's format strings, not this classifier."""
    classifier = Classifier()
    assert classifier.classify(description) is expected
    assert classifier.exact(description)
    # Exact: a report's layout does not change it.
    assert classifier.classify(description, layout(("Compute",), ("NVSwitch",))) is expected


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        # Flow's own operation names (flow/internal/task/operations/operations.go:118-120,
        # 202-209, 272-274; types.go): Task Run children and other Flow callers.
        ("FirmwareUpgrade, target version 2.1.4", Operation.FIRMWARE_UPDATE),
        ("FirmwareDowngrade, target version 2.0.0", Operation.FIRMWARE_UPDATE),
        ("FirmwareRollback, target version ", Operation.FIRMWARE_UPDATE),
        ("PowerOn, forced false", Operation.POWER_ON),
        ("ForcePowerOn", Operation.FORCE_POWER_ON),
        ("ForcePowerOff, forced true", Operation.FORCE_POWER_OFF),
        ("Restart", Operation.POWER_CYCLE),
        ("ForceRestart, forced true", Operation.FORCE_POWER_CYCLE),
        ("WarmReset", Operation.WARM_RESET),
        ("ColdReset", Operation.COLD_RESET),
        ("rack bring-up", Operation.BRING_UP),
        ("rack ingest", Operation.BRING_UP),
    ],
)
def test_flows_own_operation_names_until_a_report_says_otherwise(
    description: str, expected: Operation
) -> None:
    """Not a REST handler's description: named by it, but a default rule's layout wins."""
    classifier = Classifier()
    assert classifier.classify(description) is expected
    assert not classifier.exact(description)


def test_a_schedule_task_is_classified_by_its_report_layout_first() -> None:
    """Schedule tasks are "<name> — <RFC3339>" (taskschedule/dispatcher.go:404): free text."""
    classifier = Classifier()
    description = "nightly power cycle \u2014 2026-05-21T02:00:00Z"
    assert not classifier.exact(description)
    assert classifier.classify(description) is Operation.POWER_CYCLE  # words, until a report says
    firmware = layout(("Compute",), ("NVSwitch",))
    assert classifier.classify(description, firmware) is Operation.FIRMWARE_UPDATE
    assert classifier.classify("audit \u2014 2026-05-21T02:00:00Z", firmware) is Operation.FIRMWARE_UPDATE


def test_a_callers_own_bring_up_description_is_classified_by_layout() -> None:
    bring_up = layout(("PowerShelf",), ("Compute",), ("Compute",), ("NVSwitch",), ("NVSwitch",), ("Compute",))
    assert Classifier().classify("rack 17 first boot", bring_up) is Operation.BRING_UP


@pytest.mark.parametrize("description", ["api POWER ON rack", "Api Force Power Cycle TRAY", LEAK.upper()])
def test_words_in_free_text_ignore_case(description: str) -> None:
    assert Classifier().classify(description) is not Operation.OTHER
    assert not Classifier().exact(description)


@pytest.mark.parametrize("description", ["", "nightly maintenance", "API decommission Rack"])
def test_unknown_description_is_other(description: str) -> None:
    assert Classifier().classify(description) is Operation.OTHER


def test_the_operation_set_is_closed() -> None:
    assert set(OPERATIONS) == {
        "power_on",
        "power_off",
        "power_cycle",
        "force_power_on",
        "force_power_off",
        "force_power_cycle",
        "warm_reset",
        "cold_reset",
        "firmware_update",
        "bring_up",
        "leak_detection",
        "other",
    }


def test_extra_patterns_are_tried_before_the_builtin_ones() -> None:
    classifier = Classifier({"firmware_update": [r"^ops: power on after flash"], "bring_up": ["^ingest "]})
    assert classifier.classify("ops: power on after flash") is Operation.FIRMWARE_UPDATE
    assert classifier.classify("ingest rack 7") is Operation.BRING_UP
    assert classifier.classify("API power on Rack") is Operation.POWER_ON


def test_extra_pattern_with_an_unknown_operation_is_rejected() -> None:
    with pytest.raises(ValueError, match="reboot"):
        Classifier({"reboot": ["restart"]})


def test_unknown_description_falls_back_to_a_default_rule_layout() -> None:
    bring_up = layout(("PowerShelf",), ("Compute",), ("Compute",), ("NVSwitch",), ("NVSwitch",), ("Compute",))
    assert Classifier().classify("my tooling", bring_up) is Operation.BRING_UP
    firmware = layout(("Compute",), ("NVLSwitch",))  # the spec's spelling is the same type
    assert Classifier().classify("my tooling", firmware) is Operation.FIRMWARE_UPDATE


def test_unknown_description_and_unknown_layout_is_other() -> None:
    assert Classifier().classify("my tooling", layout(("Compute",), ("PowerShelf",))) is Operation.OTHER
    assert Classifier().classify("my tooling", layout()) is Operation.OTHER


def test_the_ingest_rule_layout_is_bring_up() -> None:
    """buildIngestRule: one stage, Compute and NVSwitch in parallel (resolver_defaults.go:932)."""
    assert Classifier().classify("my tooling", layout(("Compute", "NVSwitch"))) is Operation.BRING_UP


def test_description_wins_over_layout() -> None:
    power_on_layout = layout(("PowerShelf",), ("NVSwitch",), ("Compute",))
    assert Classifier().classify("API power off Rack", power_on_layout) is Operation.POWER_OFF


def test_cached_miss_still_uses_the_report() -> None:
    classifier = Classifier()
    assert classifier.classify("my tooling") is Operation.OTHER
    assert classifier.classify("my tooling", layout(("Compute",), ("NVSwitch",))) is Operation.FIRMWARE_UPDATE


def test_leak_component_id() -> None:
    assert leak_component_id(LEAK) == "tray-ext-17"
    assert leak_component_id("leak detection: force power-off COMPONENT abc OF TYPE PowerShelf") == "abc"
    assert leak_component_id("API power on Rack") is None
