"""Class lists and synonym tables for labelling captions and LLM sentences (our own lists).

Each table maps a class name (as the dataset ships it) to further words that name it. Plurals
need not be listed (the labeler lemmatises), nor multi-word phrases without their spaces (the
labeler adds "motorbike" for "motor bike"). Choices that trade recall for noise:

* COCO ``person`` includes common words for people (man, woman, child, player, skier, ...),
  because COCO labels every visible person and captions rarely say "person".
* COCO ``dining table`` includes "table" and ``sports ball`` includes "baseball", "soccer" (as
  the reference does): COCO labels almost any table as a dining table. "tennis" alone is left
  out (a tennis scene names the racket, not reliably a ball).
* ``orange`` (COCO) also fires on the colour; there is no way to tell them apart by words.
* VOC ``chair``: the reference (TaI-DPT) also lists "bench", but VOC annotates benches as no
  class; we leave it out by default. ``synonym_table(..., reference_quirks=True)`` adds it back
  to reproduce the reference.
* NUS-WIDE concepts are scene-level (sky, water, person, ...), so their lists are broader; words
  with many unrelated senses ("way" for road) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping

VOC2007_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

COCO2014_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

NUSWIDE_CLASSES: tuple[str, ...] = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings",
    "cars", "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog",
    "earthquake", "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost", "garden",
    "glacier", "grass", "harbor", "horses", "house", "lake", "leaf", "map", "military", "moon",
    "mountain", "nighttime", "ocean", "person", "plane", "plants", "police", "protest",
    "railroad", "rainbow", "reflection", "road", "rocks", "running", "sand", "sign", "sky",
    "snow", "soccer", "sports", "statue", "street", "sun", "sunset", "surf", "swimmers",
    "tattoo", "temple", "tiger", "tower", "town", "toy", "train", "tree", "valley", "vehicle",
    "water", "waterfall", "wedding", "whales", "window", "zebra",
)  # fmt: skip

_PEOPLE = [
    "people", "human", "man", "woman", "men", "women", "boy", "girl", "child", "kid", "baby",
    "toddler", "guy", "lady", "gentleman", "adult", "teenager", "teen", "passenger",
    "pedestrian", "player", "skier", "snowboarder", "skateboarder", "surfer", "rider",
    "biker", "cyclist", "someone", "somebody", "crowd", "family", "couple", "chef", "cook",
    "worker", "officer", "policeman", "soldier", "student", "tourist", "spectator", "catcher",
    "batter", "pitcher", "umpire", "bride", "groom", "mother", "father", "son", "daughter",
    "friend",
]  # fmt: skip

COCO2014_SYNONYMS: dict[str, list[str]] = {
    "person": _PEOPLE,
    "bicycle": ["bike", "cycle", "push bike", "mountain bike"],
    "car": ["automobile", "sedan", "taxi", "cab", "suv", "jeep", "minivan", "coupe"],
    "motorcycle": ["motor bike", "motor cycle", "scooter", "moped", "dirt bike"],
    "airplane": ["aeroplane", "plane", "jet", "airliner", "aircraft", "jumbo jet"],
    "bus": ["double decker", "minibus", "trolley bus", "school bus"],
    "train": ["locomotive", "tram", "subway", "railcar", "streetcar", "steam engine"],
    "truck": ["lorry", "pickup truck", "fire truck", "firetruck", "semi truck", "dump truck"],
    "boat": ["ship", "sailboat", "yacht", "canoe", "kayak", "ferry", "vessel", "rowboat",
             "speedboat", "raft", "gondola", "tugboat"],
    "traffic light": ["traffic signal", "stop light", "stoplight", "street light", "red light"],
    "fire hydrant": ["hydrant", "fire plug"],
    "stop sign": [],
    "parking meter": ["meter"],
    "bench": ["park bench", "pew"],
    "bird": ["pigeon", "seagull", "gull", "duck", "goose", "parrot", "swan", "sparrow", "crow",
             "eagle", "hawk", "owl", "pelican", "chicken", "rooster", "heron", "dove"],
    "cat": ["kitten", "kitty", "feline"],
    "dog": ["puppy", "pup", "doggy", "canine", "pooch", "terrier", "labrador", "poodle"],
    "horse": ["pony", "foal", "stallion", "mare", "colt"],
    "sheep": ["lamb", "ram", "ewe"],
    "cow": ["cattle", "bull", "calf", "ox", "steer", "heifer"],
    "elephant": [],
    "bear": ["polar bear", "grizzly", "brown bear", "black bear"],
    "zebra": [],
    "giraffe": [],
    "backpack": ["back pack", "rucksack", "knapsack"],
    "umbrella": ["parasol"],
    "handbag": ["hand bag", "purse", "pocketbook"],
    "tie": ["necktie", "neck tie", "bow tie", "bowtie"],
    "suitcase": ["suit case", "luggage", "baggage"],
    "frisbee": ["flying disc", "frisbe"],
    "skis": ["ski", "skiing"],
    "snowboard": ["snow board", "snowboarding"],
    "sports ball": ["ball", "football", "soccer ball", "soccer", "basketball", "baseball",
                    "volleyball", "tennis ball", "softball", "beach ball"],
    "kite": ["kiting"],
    "baseball bat": ["bat"],
    "baseball glove": ["mitt", "baseball mitt", "catcher's mitt", "glove"],
    "skateboard": ["skate board", "skateboarding"],
    "surfboard": ["surf board", "surfboarding", "surfing", "boogie board"],
    "tennis racket": ["racket", "racquet", "tennis racquet"],
    "bottle": [],
    "wine glass": ["wineglass", "glass of wine", "champagne glass", "glass of champagne"],
    "cup": ["mug", "teacup", "coffee cup", "tea cup"],
    "fork": [],
    "knife": ["knive"],
    "spoon": ["teaspoon", "tablespoon", "ladle"],
    "bowl": [],
    "banana": [],
    "apple": [],
    "sandwich": ["sub", "burger", "hamburger", "cheeseburger", "panini", "wrap"],
    "orange": ["tangerine", "mandarin"],
    "broccoli": ["brocolli", "brocoli"],
    "carrot": [],
    "hot dog": ["hotdog", "frankfurter", "wiener", "sausage"],
    "pizza": [],
    "donut": ["doughnut"],
    "cake": ["cupcake", "cheesecake"],
    "chair": ["stool", "armchair", "recliner"],
    "couch": ["sofa", "loveseat", "love seat", "sectional"],
    "potted plant": ["pot plant", "plant", "houseplant", "house plant", "flower pot",
                     "flowerpot", "planter"],
    "bed": ["bunk bed"],
    "dining table": ["dinner table", "table", "din table", "kitchen table", "picnic table"],
    "toilet": ["urinal", "commode", "toilet bowl"],
    "tv": ["television", "tv set", "tv screen", "monitor", "flat screen", "tvmonitor"],
    "laptop": ["notebook computer", "macbook", "computer"],
    "mouse": ["computer mouse"],
    "remote": ["remote control", "controller", "game controller", "wii remote", "wiimote",
               "wii controller", "clicker"],
    "keyboard": ["keypad"],
    "cell phone": ["phone", "cellphone", "mobile phone", "smartphone", "smart phone",
                   "iphone", "telephone", "cellular phone"],
    "microwave": ["microwave oven"],
    "oven": ["stove", "range"],
    "toaster": ["toaster oven"],
    "sink": ["basin", "washbasin"],
    "refrigerator": ["fridge", "freezer", "refridgerator"],
    "book": ["novel", "textbook", "bookshelf", "bookcase"],
    "clock": ["clock tower", "wall clock"],
    "vase": [],
    "scissors": ["scissor", "shears"],
    "teddy bear": ["teddy", "stuffed bear", "teddybear", "stuffed animal"],
    "hair drier": ["hair dryer", "hairdryer", "hair drier", "blow dryer", "blowdryer"],
    "toothbrush": ["tooth brush"],
}  # fmt: skip

VOC2007_SYNONYMS: dict[str, list[str]] = {
    "aeroplane": ["airplane", "plane", "jet", "airliner", "aircraft"],
    "bicycle": ["bike", "cycle", "push bike", "mountain bike"],
    "bird": COCO2014_SYNONYMS["bird"],
    "boat": COCO2014_SYNONYMS["boat"],
    "bottle": [],
    "bus": COCO2014_SYNONYMS["bus"],
    "car": COCO2014_SYNONYMS["car"],
    "cat": COCO2014_SYNONYMS["cat"],
    "chair": ["stool", "armchair", "recliner"],
    "cow": COCO2014_SYNONYMS["cow"],
    "diningtable": ["dining table", "dinner table", "table", "kitchen table", "picnic table"],
    "dog": COCO2014_SYNONYMS["dog"],
    "horse": COCO2014_SYNONYMS["horse"],
    "motorbike": ["motor bike", "motorcycle", "motor cycle", "scooter", "moped", "dirt bike"],
    "person": _PEOPLE,
    "pottedplant": ["potted plant", "pot plant", "plant", "houseplant", "house plant",
                    "flower pot", "planter"],
    "sheep": COCO2014_SYNONYMS["sheep"],
    "sofa": ["couch", "loveseat", "love seat", "sectional"],
    "train": COCO2014_SYNONYMS["train"],
    "tvmonitor": ["tv", "television", "monitor", "tv monitor", "tv set", "tv screen",
                  "flat screen", "computer monitor"],
}  # fmt: skip

NUSWIDE_SYNONYMS: dict[str, list[str]] = {
    "airport": ["airfield", "runway", "terminal", "airstrip"],
    "animal": ["animals", "wildlife", "creature", "pet", "mammal"],
    "beach": ["seashore", "shore", "coast", "seaside", "shoreline"],
    "bear": ["polar bear", "grizzly", "brown bear", "black bear"],
    "birds": ["bird", "pigeon", "seagull", "gull", "duck", "goose", "parrot", "swan", "eagle",
              "owl", "pelican", "heron"],
    "boats": ["boat", "ship", "sailboat", "yacht", "canoe", "kayak", "ferry", "vessel"],
    "book": ["novel", "books"],
    "bridge": ["footbridge", "overpass", "viaduct"],
    "buildings": ["building", "skyscraper", "architecture", "apartment", "office block"],
    "cars": ["car", "automobile", "sedan", "taxi", "jeep", "suv"],
    "castle": ["fortress", "palace", "fort"],
    "cityscape": ["skyline", "city", "downtown"],
    "clouds": ["cloud", "cloudy", "overcast"],
    "computer": ["laptop", "desktop", "pc", "monitor"],
    "coral": ["reef", "coral reef"],
    "cow": ["cattle", "bull", "calf", "ox"],
    "dancing": ["dance", "dancer", "ballet"],
    "dog": ["puppy", "pup", "doggy", "canine"],
    "earthquake": ["rubble", "ruins", "collapsed building"],
    "elk": ["deer", "moose", "stag", "reindeer", "antelope"],
    "fire": ["flame", "blaze", "bonfire", "campfire", "fireplace"],
    "fish": ["goldfish", "shark"],
    "flags": ["flag", "banner"],
    "flowers": ["flower", "blossom", "bloom", "rose", "tulip", "daisy", "sunflower", "lily"],
    "food": ["meal", "dish", "pizza", "sandwich", "cake", "bread", "fruit", "vegetable",
             "dessert", "snack"],
    "fox": [],
    "frost": ["frosty", "frozen", "ice", "icicle"],
    "garden": ["backyard", "yard", "flower bed", "park"],
    "glacier": ["iceberg", "ice field", "ice sheet"],
    "grass": ["lawn", "grassland", "meadow", "turf", "grassy"],
    "harbor": ["harbour", "port", "dock", "pier", "marina", "wharf", "jetty"],
    "horses": ["horse", "pony", "foal", "stallion", "mare"],
    "house": ["home", "cottage", "hut", "cabin", "bungalow", "villa"],
    "lake": ["pond", "reservoir", "lagoon"],
    "leaf": ["leaves", "foliage"],
    "map": [],
    "military": ["army", "soldier", "troops", "tank", "navy", "warship"],
    "moon": ["moonlight", "full moon", "crescent"],
    "mountain": ["mountains", "hill", "peak", "summit", "mount"],
    "nighttime": ["night", "night time", "dark sky", "evening"],
    "ocean": ["sea", "waves", "seawater"],
    "person": _PEOPLE,
    "plane": ["airplane", "aeroplane", "aircraft", "jet", "airliner", "helicopter"],
    "plants": ["plant", "bush", "shrub", "vegetation", "fern", "cactus"],
    "police": ["policeman", "police officer", "cop", "police car"],
    "protest": ["protester", "demonstration", "rally", "placard", "march"],
    "railroad": ["railway", "rail", "railway track", "train track", "rail track", "tracks"],
    "rainbow": [],
    "reflection": ["reflect", "reflected", "mirror"],
    "road": ["path", "highway", "pathway", "lane", "driveway", "roadway", "trail"],
    "rocks": ["rock", "stone", "boulder", "pebble", "rocky", "cliff"],
    "running": ["run", "runner", "jogging", "jogger", "sprint"],
    "sand": ["sandy", "dune"],
    "sign": ["signboard", "signage", "billboard", "poster", "notice board", "street sign"],
    "sky": ["skies"],
    "snow": ["snowy", "snowfall", "snowman"],
    "soccer": ["football", "soccer ball", "soccer player"],
    "sports": ["sport", "game", "match", "tennis", "baseball", "basketball", "athlete"],
    "statue": ["sculpture", "monument", "figurine", "bust"],
    "street": ["sidewalk", "pavement", "alley", "avenue"],
    "sun": ["sunlight", "sunshine", "sunny", "sunrise"],
    "sunset": ["sun set", "dusk", "twilight"],
    "surf": ["surfing", "surfer", "surfboard", "wave"],
    "swimmers": ["swimmer", "swimming", "swim", "swimming pool"],
    "tattoo": [],
    "temple": ["shrine", "pagoda", "church", "cathedral", "mosque"],
    "tiger": [],
    "tower": ["clock tower", "spire", "lighthouse", "turret"],
    "town": ["village", "city"],
    "toy": ["doll", "teddy bear", "stuffed animal", "lego"],
    "train": ["locomotive", "tram", "railcar", "subway"],
    "tree": ["trees", "palm tree", "forest", "woods", "trunk", "branch"],
    "valley": ["canyon", "gorge", "ravine"],
    "vehicle": ["car", "truck", "bus", "van", "motorcycle", "bicycle", "bike", "jeep", "tractor",
                "scooter"],
    "water": ["river", "stream", "lake", "pond", "sea", "ocean", "pool"],
    "waterfall": ["cascade", "water fall", "falls"],
    "wedding": ["bride", "groom", "wedding dress", "marriage"],
    "whales": ["whale", "dolphin", "orca"],
    "window": ["windows", "windowpane", "window pane", "glass pane"],
    "zebra": [],
}  # fmt: skip

#: Reference (TaI-DPT) additions we leave out by default, to reproduce it when asked.
REFERENCE_QUIRKS: dict[str, dict[str, list[str]]] = {
    "voc2007": {"chair": ["bench"]},
    "nuswide": {"road": ["way"]},
}

_TABLES: dict[str, tuple[tuple[str, ...], Mapping[str, list[str]]]] = {
    "voc2007": (VOC2007_CLASSES, VOC2007_SYNONYMS),
    "coco2014": (COCO2014_CLASSES, COCO2014_SYNONYMS),
    "nuswide": (NUSWIDE_CLASSES, NUSWIDE_SYNONYMS),
}


def synonym_table(
    dataset: str, *, reference_quirks: bool = False
) -> tuple[list[str], dict[str, list[str]]]:
    """Class names and synonyms of ``dataset`` (voc2007, coco2014, nuswide), fresh copies."""
    if dataset not in _TABLES:
        raise KeyError(f"no synonym table for {dataset!r}; expected one of {sorted(_TABLES)}")
    classes, table = _TABLES[dataset]
    synonyms = {name: list(table.get(name, [])) for name in classes}
    if reference_quirks:
        for name, extra in REFERENCE_QUIRKS.get(dataset, {}).items():
            synonyms[name] += extra
    return list(classes), synonyms
