"""Turn markers of chat templates, read by their role, not by where they appear.

A marker either opens a user turn (``[INST]``, ``USER:``), opens the assistant's turn
(``[/INST]``, ``ASSISTANT:``: the prompt ends with it, the model never writes it), ends a
turn (``<|im_end|>``, ``<|eot_id|>``: the model writes it when its answer is done), or opens
any turn (``<|im_start|>``). What belongs in ``stopwords`` follows from the roles: every
end-of-turn marker, and, in families whose answer ends with the EOS token, the next user
turn's opener, which a model that runs past its EOS writes next (LOCALAI-NOTES, failure 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    OPENS_USER = "opens-user"
    OPENS_ASSISTANT = "opens-assistant"
    OPENS_ANY = "opens-any"
    ENDS_TURN = "ends-turn"


@dataclass(frozen=True)
class Family:
    name: str
    markers: tuple[tuple[str, Role], ...]

    @property
    def ends_with_eos(self) -> bool:
        """The assistant's turn has no end marker of its own: the EOS token ends it."""
        return not any(role is Role.ENDS_TURN for _, role in self.markers)


# Most specific first: a template is of the first family whose markers it uses.
FAMILIES = (
    Family("Llama-3", (("<|start_header_id|>", Role.OPENS_ANY), ("<|eot_id|>", Role.ENDS_TURN))),
    Family("ChatML", (("<|im_start|>", Role.OPENS_ANY), ("<|im_end|>", Role.ENDS_TURN))),
    Family("Gemma", (("<start_of_turn>", Role.OPENS_ANY), ("<end_of_turn>", Role.ENDS_TURN))),
    Family("Phi-3", (("<|user|>", Role.OPENS_USER), ("<|assistant|>", Role.OPENS_ASSISTANT),
                     ("<|end|>", Role.ENDS_TURN))),
    Family("Llama-2/Mistral", (("[INST]", Role.OPENS_USER), ("[/INST]", Role.OPENS_ASSISTANT))),
    Family("Vicuna", (("USER:", Role.OPENS_USER), ("ASSISTANT:", Role.OPENS_ASSISTANT))),
    Family("Alpaca", (("### Instruction:", Role.OPENS_USER),
                      ("### Response:", Role.OPENS_ASSISTANT))),
    Family("Human/Assistant", (("### Human:", Role.OPENS_USER),
                               ("### Assistant:", Role.OPENS_ASSISTANT))),
)


@dataclass(frozen=True)
class Turns:
    """What a template's markers say about how a turn ends."""

    family: Family
    # Markers found in the template, with their role.
    found: tuple[tuple[str, Role], ...]

    def stopwords(self) -> list[tuple[str, str]]:
        """(marker, why) for each marker that should be a stopword."""
        out = [(m, "ends each turn: the model writes it when its answer is done")
               for m, role in self.found if role is Role.ENDS_TURN]
        if self.family.ends_with_eos:
            out += [(m, "opens the next user turn: the answer ends with the EOS token, and a "
                     "model that runs past it writes this next")
                    for m, role in self.found if role is Role.OPENS_USER]
        return out

    def never_echoed(self) -> list[str]:
        """Markers that open the assistant's turn: the prompt ends with them."""
        return [m for m, role in self.found if role is Role.OPENS_ASSISTANT]


def turns_of(text: str) -> Turns | None:
    """The family of a chat template's markers (None: no known markers)."""
    for family in FAMILIES:
        found = tuple((m, role) for m, role in family.markers if m in text)
        if found:
            return Turns(family, found)
    return None
