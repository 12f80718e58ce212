"""Symbols outside the source vocabulary bypass the model and are copied into the translation."""

from __future__ import annotations

import pytest
import torch

from seqformer import Translator
from seqformer.passthrough import Held, hold_out, put_back


def emoji_unknown(ch: str) -> bool:
    """A vocabulary that knows everything below U+2000 (Latin, punctuation) and nothing above."""
    return ord(ch) >= 0x2000


@pytest.mark.parametrize(("src", "held", "translation", "restored"), [
    ("I love 🍕!", Held("I love!", inner=("🍕",)), "J'adore !", "J'adore 🍕 !"),
    ("🙂 Hello.", Held("Hello.", prefix=("🙂",)), "Bonjour.", "🙂 Bonjour."),
    ("Good night 🌙", Held("Good night", tail=("🌙",)), "Bonne nuit", "Bonne nuit 🌙"),
    ("Good night. 🌙🌙", Held("Good night.", tail=("🌙🌙",)), "Bonne nuit.", "Bonne nuit. 🌙🌙"),
    ("a 🍕 b 🍺 c.", Held("a b c.", inner=("🍕", "🍺")), "x y z.", "x y z 🍕 🍺."),
    ("🎉 🎉", Held("", prefix=("🎉", "🎉")), "", "🎉 🎉"),
])
def test_symbols_are_held_out_and_put_back_in_place(src, held, translation, restored):
    assert hold_out(src, emoji_unknown) == held
    assert put_back(translation, held) == restored


def test_joined_emoji_sequences_and_skin_tones_stay_whole():
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # man ZWJ woman ZWJ girl
    wave = "\U0001F44B\U0001F3FD"  # waving hand, medium skin tone
    heart = "\u2764\ufe0f"  # heavy black heart + emoji presentation selector
    held = hold_out(f"Hi {wave} my {family} {heart} you.", emoji_unknown)
    assert held.text == "Hi my you."
    assert held.inner == (wave, family, heart)


def test_a_joined_sequence_is_held_whole_when_only_a_part_is_unknown():
    # a vocabulary that knows ❤ and 👍 but not 🔥 or the skin tones: "❤️‍🔥" was cut into ❤️‍ (to the model,
    # its joiner too) and 🔥 (put back alone), and the skin tone was moved away from its hand
    def known_heart(ch: str) -> bool:
        return emoji_unknown(ch) and ch not in "\u2764\U0001F44D"

    fire_heart = "\u2764\ufe0f\u200d\U0001F525"  # heart, emoji selector, ZWJ, fire
    thumbs = "\U0001F44D\U0001F3FD"  # thumbs up, medium skin tone
    assert hold_out(f"Love it {fire_heart}!", known_heart) == Held("Love it!", inner=(fire_heart,))
    assert hold_out(f"{thumbs} Great.", known_heart) == Held("Great.", prefix=(thumbs,))
    assert hold_out("Love it \u2764\ufe0f!", known_heart) == Held("Love it \u2764\ufe0f!")  # known: to the model


def test_holding_a_symbol_changes_no_spacing_but_its_own():
    # every space before punctuation in the sentence went: the model read "I use.NET" and "Quoi?" because of an emoji
    assert hold_out("I use .NET daily 😀", emoji_unknown) == Held("I use .NET daily", tail=("😀",))
    assert hold_out("Quoi ? 😀 Non !", emoji_unknown) == Held("Quoi ? Non !", inner=("😀",))
    assert hold_out("Wait ... 😀!", emoji_unknown) == Held("Wait ...!", inner=("😀",))


def test_a_subdivision_flag_keeps_its_tag_characters():
    # black flag + tag letters "gbeng" + cancel tag: England's flag, one symbol (was: the black flag held out,
    # its six invisible tags sent to the model as text)
    england = "\U0001F3F4" + "".join(chr(0xE0000 + ord(c)) for c in "gbeng") + "\U000E007F"
    assert hold_out(f"I love London {england}!", emoji_unknown) == Held("I love London!", inner=(england,))


def test_a_keycap_emoji_is_a_symbol_not_a_digit():
    keycap = "1\ufe0f\u20e3"  # digit one + emoji presentation + combining enclosing keycap
    assert hold_out(f"Press {keycap} now.", emoji_unknown) == Held("Press now.", inner=(keycap,))
    assert hold_out("Press #\u20e3 or 1 now.", emoji_unknown) == Held("Press or 1 now.", inner=("#\u20e3",))
    assert hold_out(f"Press {keycap} now.", lambda ch: False) == Held(f"Press {keycap} now.")  # known: to the model


def test_known_symbols_and_unknown_letters_go_to_the_model():
    assert hold_out("I love 🍕!", lambda ch: False) == Held("I love 🍕!")
    # An unknown letter or punctuation mark is part of a word: holding it out would change the word.
    assert hold_out("日本 is far.", lambda ch: True) == Held("日本 is far.")
    assert hold_out("I don’t know.", lambda ch: True) == Held("I don’t know.")
    # A combining accent belongs to its letter (NFC), not to a symbol.
    assert hold_out("cafe\u0301 🍕", emoji_unknown) == Held("café", tail=("🍕",))


def test_no_symbol_means_translation_unchanged():
    assert put_back("Bonjour !", Held("Hello!")) == "Bonjour !"


def test_translator_never_feeds_unknown_tokens_and_copies_the_symbols(model_dir):
    tr = Translator.load(model_dir)
    unk = tr.tokenizer.src.unk_id()
    assert tr.tokenizer.src_unknown("🍕") and not tr.tokenizer.src_unknown("a")
    seen: list[torch.Tensor] = []  # every source batch the encoder reads
    tr.model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    with_symbols, plain = tr.translate_nbest(["🙂 a b 🍕 c d", "a b c d"], beam_size=2, nbest=2)
    assert seen and not any(src.eq(unk).any() for src in seen)
    assert [h.text for h in with_symbols] == [f"🙂 {h.text} 🍕".replace("  ", " ") for h in plain]
    assert [h.score for h in with_symbols] == pytest.approx([h.score for h in plain])
    assert tr.translate(["🎉", ""]) == ["🎉", ""]
