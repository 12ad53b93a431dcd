"""A procedural multi-category catalog and users with learnable purchase patterns (the embedded default data).

Patterns a model can learn and popularity cannot:
  * complements: each product type has a successor type (a kit is followed by its refill, ...);
  * brand loyalty: each user prefers one brand and buys it most of the time;
  * category drift: with small probability a user moves to a random product type.
Deterministic for a seed; no download.
"""
from __future__ import annotations

import numpy as np

from calrec_jax.data.records import Catalog, CategoryData, validate

CATEGORIES = {
    "Lab_Supplies": ["Pipette", "Pipette Tips", "Beaker", "Beaker Lid", "Test Tube", "Tube Rack",
                     "Petri Dish", "Agar Powder", "Microscope", "Microscope Slides", "Glove Box", "Nitrile Gloves"],
    "Garden": ["Hose", "Hose Nozzle", "Seed Tray", "Potting Soil", "Pruner", "Pruner Oil", "Planter",
               "Plant Food", "Rake", "Leaf Bags", "Sprinkler", "Timer Valve"],
    "Kitchen": ["Espresso Maker", "Coffee Beans", "Knife Set", "Knife Sharpener", "Cutting Board",
                "Board Oil", "Blender", "Blender Jar", "Tea Kettle", "Loose Tea", "Skillet", "Skillet Lid"],
    "Office": ["Stapler", "Staples", "Printer", "Ink Cartridge", "Notebook", "Gel Pens", "Desk Lamp",
               "LED Bulb", "Label Maker", "Label Tape", "Shredder", "Shredder Oil"],
}
DEFAULT_USERS = {"Garden": 600, "Kitchen": 300, "Lab_Supplies": 400, "Office": 200}
BRANDS = ["Acme", "Borealis", "Cobalt", "Dynamo", "Evergreen", "Fulcrum", "Granite", "Helix", "Ionic",
          "Juniper", "Kestrel", "Lumen"]
ADJECTIVES = ["Compact", "Professional", "Heavy Duty", "Classic", "Deluxe", "Eco", "Premium", "Portable"]
SIZES = ["Small", "Medium", "Large", "2-Pack", "6-Pack", "12 oz", "1 Gallon", "500 ml"]


def make_catalog(category: str, rng: np.random.Generator, items_per_type: int) -> tuple[Catalog, np.ndarray,
                                                                                        np.ndarray]:
  """Items (title/category/brand/price) plus each item's product-type and brand index."""
  types = CATEGORIES[category]
  ids, attrs, type_of, brand_of = [], [], [], []
  for t, ptype in enumerate(types):
    brands = rng.choice(len(BRANDS), size=items_per_type, replace=items_per_type > len(BRANDS))
    for b in brands:
      adj, size = rng.choice(ADJECTIVES), rng.choice(SIZES)
      price = f"${rng.uniform(3, 200):.2f}" if rng.random() > 0.1 else ""
      ids.append(f"{category[:3].upper()}{len(ids):05d}")
      attrs.append({"title": f"{BRANDS[b]} {adj} {ptype}, {size}", "category": category.replace("_", " "),
                    "brand": BRANDS[b], "price": price})
      type_of.append(t)
      brand_of.append(b)
  return Catalog(ids, attrs), np.array(type_of), np.array(brand_of)


def make_category(category: str, num_users: int, seed: int, items_per_type: int = 8,
                  min_len: int = 5, max_len: int = 14, p_complement: float = 0.7, p_loyal: float = 0.8
                  ) -> CategoryData:
  """One synthetic category with `num_users` users."""
  if category not in CATEGORIES:
    raise ValueError(f"unknown synthetic category {category!r}; choose from {sorted(CATEGORIES)}")
  rng = np.random.default_rng([seed, sorted(CATEGORIES).index(category)])
  catalog, type_of, brand_of = make_catalog(category, rng, items_per_type)
  n_types = len(CATEGORIES[category])
  popularity = rng.zipf(1.6, size=len(catalog)).astype(np.float64)
  by_type_brand = {}
  for i, (t, b) in enumerate(zip(type_of, brand_of)):
    by_type_brand.setdefault((t, b), []).append(i)

  def pick(ptype: int, brand: int, loyal: bool) -> int:
    if loyal and (ptype, brand) in by_type_brand:
      return int(rng.choice(by_type_brand[(ptype, brand)]))
    pool = np.flatnonzero(type_of == ptype)
    p = popularity[pool] / popularity[pool].sum()
    return int(rng.choice(pool, p=p))

  users, seqs = [], []
  for u in range(num_users):
    brand = int(rng.integers(len(BRANDS)))
    length = int(rng.integers(min_len, max_len + 1))
    ptype = int(rng.integers(n_types))
    seq: list[int] = []
    while len(seq) < length:
      item = pick(ptype, brand, rng.random() < p_loyal)
      if item not in seq:
        seq.append(item)
      # complements come in pairs (2k -> 2k+1); after a pair, drift to the next pair or anywhere
      if rng.random() < p_complement:
        ptype = ptype + 1 if ptype % 2 == 0 else (ptype + 1) % n_types
      else:
        ptype = int(rng.integers(n_types))
    users.append(f"{category[:3].lower()}_user{u:05d}")
    seqs.append(seq)
  data = CategoryData(category, catalog, users, seqs, {})
  validate(data, f"synthetic:{category}")
  return data


def make_dataset(categories: list[str] | None = None, users_per_category: list[int] | None = None,
                 seed: int = 0) -> list[CategoryData]:
  """Several synthetic categories of different sizes (so the mixture weights matter)."""
  categories = categories or sorted(CATEGORIES)
  # by name, so that a category is the same data alone and inside a mixture (stage 1 -> stage 2)
  users_per_category = users_per_category or [DEFAULT_USERS.get(c, 300) for c in categories]
  if len(users_per_category) != len(categories):
    raise ValueError("users_per_category must have one entry per category")
  return [make_category(c, n, seed) for c, n in zip(categories, users_per_category)]
