"""The glyph model's vocabulary: the words it was trained to render, and held-out words it never saw.

Upper-case English words of 3 to 6 letters, so that every word fits the canvas's cells. The
held-out list exists for honesty about generalisation: the tokenizer spells every word letter by
letter, so a held-out word is a new sequence of letters the model has drawn in every cell.
"""

from __future__ import annotations

TRAIN_WORDS: tuple[str, ...] = tuple("""
APPLE BANK BEACH BELL BIKE BIRD BOOK BOX BREAD CAFE CAKE CAMP CAR CAT CHAIR CLOCK CLOUD COFFEE CORN
DANCE DOG DREAM DUCK EARTH EXIT FARM FIRE FLOWER FOOD FOREST FROST GAME GARDEN GIFT GLASS GOLD HAPPY
HAT HEART HONEY HORSE HOTEL ICE JAZZ JOB KEY KING KITE LAMP LEAF LEMON LION LOVE LUCK MALL MANGO MAP
MILK MILL MONEY MOUSE MUSIC NEST NIGHT NORTH OCEAN OPEN ORANGE OWL PARK PARTY PEACE PEN PHONE PIANO
PINK PIZZA PLANT QUEEN QUIET RADIO RED RING RIVER ROBOT ROCK ROSE SALT SAND SCHOOL SHIP SHOP SILK
SKY SLEEP SMILE SOFA SOLD SOUP SPORT STAR STOP SUGAR SUMMER SUN TAXI TEA TIGER TOWN TOY TRAIN TRUCK
VAN WATER WEST WIND WINE WOLF WOOD WORLD ZEBRA ZONE
""".split())

HELD_OUT_WORDS: tuple[str, ...] = tuple("""
BAKER BLUE BRICK CHESS CROWN DAISY EAGLE FENCE FLAME GRAPE HILL IRON JUMP LIME MARS MINT NOTE
PANDA PEARL QUEST RAVEN SHELF SOLAR TOWER TULIP UNCLE VELVET WHALE YARD ZERO
""".split())

# The attribute the prompt controls besides the word: the sign's tone against its ground.
TONES: tuple[str, ...] = ("dark", "light")



def prompt_for(word: str, tone: str, model=None, texture: str | None = None) -> str:
    """The prompt a glyph model (``model``: a Variant, default glyph) was trained on for ``word`` on a
    ``tone`` sign (over a ``texture`` ground on the scene model)."""
    from amo_engine.model.glyph.variants import GLYPH

    return (model or GLYPH).template.format(tone=tone, word=word, texture=texture)


def in_vocabulary(word: str) -> bool:
    return word in TRAIN_WORDS
