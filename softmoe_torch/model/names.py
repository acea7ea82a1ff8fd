"""The one map from the paper's names of a contaminated mixture's parameters to the model's own
(``ContaminatedMoE``: a ``gate`` and a list of ``prompts``, each with an ``expert`` and a
variance ``nu``). K prompts are numbered 0..K-1; the paper's model has one."""

PAPER_NAMES = {"beta": "gate.beta", "tau": "gate.tau", "eta": "prompts.0.expert.eta", "nu": "prompts.0.nu"}


def expert_prefix(k: int = 0) -> str:
    """The prefix of prompt k's expert parameters: 'prompts.k.expert.'."""
    return f"prompts.{k}.expert."


def variance_name(k: int = 0) -> str:
    """The name of prompt k's variance: 'prompts.k.nu'."""
    return f"prompts.{k}.nu"
