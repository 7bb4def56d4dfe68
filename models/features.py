"""Names of the transformed features, in one place (the TFX template's features.py)."""

SCENARIO_ID = "scenario_id"
SCENARIO_VOCABULARY = "scenario"
SCENARIO_SEPARATOR = "/"


def scenario_level_id(level: int) -> str:
    """Transformed key of a coarser level of a scenario hierarchy (0 = coarsest)."""
    return f"scenario_level_{level}_id"


def scenario_level_vocabulary(level: int) -> str:
    """Vocabulary of a coarser level of a scenario hierarchy (the finest is SCENARIO_VOCABULARY)."""
    return f"{SCENARIO_VOCABULARY}_level_{level}"


def vocabulary_name(field: str) -> str:
    return f"vocab_{field}"


def label_key(task: str) -> str:
    """Labels keep their task's name, raw and transformed."""
    return task
