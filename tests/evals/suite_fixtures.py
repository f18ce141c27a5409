"""Small fixtures of every registered suite, each in the format its authors publish (a few rows
copied in shape from the published files), written to a folder by the tests."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

GENEVAL = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}],
     "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "clock", "count": 3}],
     "exclude": [{"class": "clock", "count": 4}], "prompt": "a photo of three clocks"},
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
     "prompt": "a photo of a red car"},
    {"tag": "position", "include": [{"class": "dog", "count": 1},
                                    {"class": "cat", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a cat left of a dog"},
]

GENEVAL2 = [
    {"prompt": "a green backpack and a pig", "atom_count": 3,
     "vqa_list": [["How many backpacks are in the image?", "one"],
                  ["Is the backpack green?", "Yes"],
                  ["Are there any backpacks in the image?", "Yes"],
                  ["How many pigs are in the image?", "one"],
                  ["Are there any pigs in the image?", "Yes"]],
     "skills": ["count", "attribute", "object", "count", "object"]},
    {"prompt": "seven green croissants", "atom_count": 3,
     "vqa_list": [["How many croissants are in the image?", "seven"],
                  ["Are the croissants green?", "Yes"],
                  ["Are there any croissants in the image?", "Yes"]],
     "skills": ["count", "attribute", "object"]},
    {"prompt": "a dog chasing a red ball", "atom_count": 4,
     "vqa_list": [["Is there a dog?", "Yes"], ["Is there a ball?", "Yes"],
                  ["Is the ball red?", "Yes"], ["Is the dog chasing the ball?", "Yes"]],
     "skills": ["object", "object", "attribute", "verb"]},
]

PARTI = ("Prompt\tCategory\tChallenge\tNote\n"
         "bond\tAbstract\tBasic\tSingle-word prompt.\n"
         "A punk rock squirrel in a studded leather jacket\tAnimals\tImagination\t\n"
         "an old map of the world\tArtifacts\tBasic\t\n"
         "a bowl of soup that looks like a monster\tFood & Beverage\tImagination\t\n")

DPG_HEADER = ("item_id,text,keywords,proposition_id,dependency,category_broad,"
              "category_detailed,tuple,question_natural_language\n")
DPG = DPG_HEADER + (
    'dense0,"A red car parked beside a wooden fence, under a cloudy sky.",car,1,0,entity,'
    'whole,entity - whole (car),Is there a car?\n'
    'dense0,"A red car parked beside a wooden fence, under a cloudy sky.",red,2,1,attribute,'
    'color,"attribute - color (car, red)",Is the car red?\n'
    'dense0,"A red car parked beside a wooden fence, under a cloudy sky.",fence,3,0,entity,'
    'whole,entity - whole (fence),Is there a fence?\n'
    'dense0,"A red car parked beside a wooden fence, under a cloudy sky.",beside,4,"1,3",'
    'relation,spatial,"relation - spatial (car, fence, beside)",Is the car beside the fence?\n'
    'dense1,"Two cats asleep on a blue sofa.",cats,1,0,entity,whole,entity - whole (cat),'
    'Are there cats?\n'
    'dense1,"Two cats asleep on a blue sofa.",two,2,1,other,count,"other - count (cat, ==2)",'
    'Are there two cats?\n'
    'dense1,"Two cats asleep on a blue sofa.",sofa,3,0,entity,whole,entity - whole (sofa),'
    'Is there a sofa?\n'
    'dense1,"Two cats asleep on a blue sofa.",blue,4,3,attribute,color,'
    '"attribute - color (sofa, blue)",Is the sofa blue?\n')

T2I_COMPBENCH = {"color_val.txt": "a green bench and a red car\na blue backpack and a red cat\n",
                 "numeracy_val.txt": "three bowls\ntwo dogs and one cat\n"}

GENAI_IMAGE = {"00000": {"prompt": "A dog that is not brown sits on a red chair.",
                         "models": {}},
               "00001": {"prompt": "Three apples and two bananas on a plate.", "models": {}},
               "00002": {"prompt": "A bird above a house.", "models": {}}}
GENAI_SKILLS = {"attribute": [0], "negation": [0], "counting": [1], "spatial relation": [2],
                "basic": [0, 2], "advanced": [0, 1]}

DRAWBENCH = ("Prompts,Category\n"
             "A red colored car.,Colors\n"
             "A black apple and a green backpack.,Colors\n"
             "Three cats and one dog sitting on the grass.,Counting\n")

COCO = {"annotations": [{"image_id": 1, "id": 11, "caption": "A man riding a bike. "},
                        {"image_id": 1, "id": 10, "caption": "A person on a bicycle."},
                        {"image_id": 2, "id": 20, "caption": "Two dogs in the snow."},
                        {"image_id": 3, "id": 30, "caption": "A plate of food."}]}


def coco_zip() -> bytes:
    """The COCO annotations archive, holding the validation captions at their published path."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("annotations/captions_val2014.json", json.dumps(COCO))
    return buffer.getvalue()


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# suite -> {published file name: bytes}
FILES: dict[str, dict[str, bytes]] = {
    "geneval": {"evaluation_metadata.jsonl": jsonl(GENEVAL).encode()},
    "geneval2": {"geneval2_data.jsonl": jsonl(GENEVAL2).encode()},
    "partiprompts": {"PartiPrompts.tsv": PARTI.encode()},
    "dpg_bench": {"dpg_bench.csv": DPG.encode()},
    "t2i_compbench": {k: v.encode() for k, v in T2I_COMPBENCH.items()},
    "genai_bench": {"genai_image.json": json.dumps(GENAI_IMAGE).encode(),
                    "genai_skills.json": json.dumps(GENAI_SKILLS).encode()},
    "drawbench": {"drawbench.csv": DRAWBENCH.encode()},
    "coco30k": {"annotations_trainval2014.zip": coco_zip()},
}


def write_suite(name: str, folder: Path) -> Path:
    """The suite's fixture files in `folder`, under their published names; the path a job's
    `prompts.file` takes: the file for a one-file suite, else the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for file, data in FILES[name].items():
        (folder / file).write_bytes(data)
    return folder / next(iter(FILES[name])) if len(FILES[name]) == 1 else folder
