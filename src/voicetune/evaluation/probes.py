"""Fixed probe sentences, rendered at every in-loop evaluation so checkpoints are compared on the same text.

Each language's set covers what breaks first when a TTS model drifts: very short phrases (early stop,
silence), numbers / dates / names (text normalisation), questions (prosody), and long sentences
(runaway generation, repetition, drifting voice). The sets are part of the evaluation protocol: change
them and results of older runs are no longer comparable (hence :data:`PROBES_VERSION`).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

PROBES_VERSION = 1

PROBES: dict[str, list[str]] = {
    "en": [
        # short phrases
        "Yes, of course.",
        "Thank you very much.",
        "Good morning, everyone.",
        # numbers, dates, names
        "The meeting starts at 9:30 on March 14th, 2024.",
        "Dr. Amelia Hartley paid 42 dollars and 50 cents for 3 books.",
        "Call me back on 555 0199 before Friday, please.",
        # questions
        "Where did you put the keys to the car?",
        "Would you like to come with us to the concert tonight?",
        "Is this really the best we can do?",
        # long sentences
        ("When the storm finally passed, the villagers walked down to the harbour to see which of the "
         "fishing boats had survived the night, and they were surprised to find every one of them intact."),
        ("Although she had read the instructions three times, the new coffee machine still refused to "
         "work, so she gave up and made a pot of tea the old-fashioned way instead."),
        ("It is important to remember that good recordings, a quiet room and a little patience matter "
         "far more to the final result than any clever trick in the training recipe."),
    ],
    "de": [
        "Ja, natürlich.",
        "Vielen Dank für Ihre Hilfe.",
        "Der Zug fährt am 3. Mai um 14:15 Uhr ab Gleis 7.",
        "Wo hast du den Schlüssel hingelegt?",
        "Frau Dr. Müller hat 25 Euro für zwei Bücher bezahlt.",
        ("Als der Regen endlich aufhörte, gingen alle hinunter zum Hafen, um nachzusehen, ob die Boote "
         "den Sturm überstanden hatten."),
    ],
    "fr": [
        "Oui, bien sûr.",
        "Merci beaucoup pour votre aide.",
        "Le train part le 3 mai à 14 h 15 du quai numéro 7.",
        "Où as-tu mis les clés de la voiture ?",
        "Madame Dubois a payé 25 euros pour deux livres.",
        ("Quand la pluie s'est enfin arrêtée, tout le village est descendu au port pour voir si les "
         "bateaux avaient résisté à la tempête."),
    ],
    "es": [
        "Sí, claro.",
        "Muchas gracias por tu ayuda.",
        "El tren sale el 3 de mayo a las 14:15 desde el andén 7.",
        "¿Dónde dejaste las llaves del coche?",
        "La doctora García pagó 25 euros por dos libros.",
        ("Cuando por fin dejó de llover, todo el pueblo bajó al puerto para ver si los barcos habían "
         "resistido la tormenta."),
    ],
}


def probe_sentences(language: str, limit: int | None = None) -> list[str]:
    """The probe sentences for ``language`` (``"en"``, ``"de"``, ``"en-US"`` → ``"en"``...).

    Languages without a set fall back to English with a warning (the model still renders them, but
    the ASR round trip then measures a foreign-language read-out). ``limit`` keeps the first N;
    for English any N >= 4 still covers short, numbers, question and long (see :func:`_interleaved`).
    """
    lang = language.split("-")[0].split("_")[0].lower()
    if lang not in PROBES:
        logger.warning("no probe sentences for language %r; using the English set", language)
        lang = "en"
    sentences = _interleaved(PROBES[lang])
    return sentences[:limit] if limit else sentences


def _interleaved(sentences: list[str]) -> list[str]:
    """Round-robin over four equal category groups (the English set: 3 short, 3 numbers/names,
    3 questions, 3 long) so that any prefix of 4 or more covers every category. Lists that do not
    split into four equal groups (the shorter sets of other languages) keep their written order."""
    n_groups = 4
    size = len(sentences) // n_groups
    if size * n_groups != len(sentences) or size == 0:
        return list(sentences)
    groups = [sentences[i * size:(i + 1) * size] for i in range(n_groups)]
    return [g[i] for i in range(size) for g in groups]
