"""The glyph model's vocabulary: the words it was trained to render, and held-out words it never saw.

Upper-case English words of 3 to 6 letters, so that every word fits the sign at one font size.
The held-out list exists for honesty about generalisation: the model conditions on whole-word
tokens, so a held-out word reaches it only as single characters and is not expected to render.
"""

from __future__ import annotations

TRAIN_WORDS: tuple[str, ...] = tuple("""
APPLE BANK BEACH BEAR BELL BIKE BIRD BOAT BOOK BOX BREAD BUS CAFE CAKE CAMP CANDY CAR CAT CHAIR
CITY CLOCK CLOUD COFFEE COLD CORN DANCE DOG DOOR DREAM DUCK EARTH EAST EXIT FARM FIRE FISH FLOWER
FOOD FOREST FROG FROST GAME GARDEN GHOST GIFT GLASS GOLD GRASS HAPPY HAT HEART HELLO HONEY HORSE
HOTEL HOUSE ICE JAZZ JOB JUICE KEY KING KITE LAKE LAMP LEAF LEMON LIGHT LION LOVE LUCK MAGIC MALL
MANGO MAP MENU MILK MILL MONEY MOON MOUSE MUSIC NEST NEWS NIGHT NORTH OCEAN OIL OPEN ORANGE OWL
PAPER PARK PARTY PEACE PEAR PEN PHONE PIANO PIG PINK PIZZA PLANT POOL QUEEN QUIET RADIO RAIN RED
RING RIVER ROAD ROBOT ROCK ROSE SALE SALT SAND SCHOOL SEA SHIP SHOP SILK SILVER SKY SLEEP SMILE
SNOW SOFA SOLD SOUP SPACE SPORT STAR STOP STORM SUGAR SUMMER SUN TABLE TAXI TEA TIGER TIME TOWN
TOY TRAIN TREE TRUCK VAN WATER WAVE WEST WIND WINE WINTER WOLF WOOD WORLD YES ZEBRA ZONE
""".split())

HELD_OUT_WORDS: tuple[str, ...] = tuple("""
BAKER BLUE BRICK CHESS CROWN DAISY EAGLE FENCE FLAME GRAPE HILL IRON JUMP LIME MARS MINT NOTE
PANDA PEARL QUEST RAVEN SHELF SOLAR TOWER TULIP UNCLE VELVET WHALE YARD ZERO
""".split())

# The attribute the prompt controls besides the word: the sign's tone against its ground.
TONES: tuple[str, ...] = ("dark", "light")

PROMPT_TEMPLATE = "a {tone} sign that says '{word}'"


def prompt_for(word: str, tone: str) -> str:
    """The prompt the glyph model was trained on for ``word`` on a ``tone`` sign."""
    return PROMPT_TEMPLATE.format(tone=tone, word=word)


def in_vocabulary(word: str) -> bool:
    return word in TRAIN_WORDS
