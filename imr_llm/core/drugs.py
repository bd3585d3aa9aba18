"""Drug names to drug classes: the medications workers' compensation IMR letters actually name.

Why a hand-kept lexicon and not a packaged drug vocabulary (RxNorm and the like): the workers'
compensation formulary is narrow (a few hundred names cover nearly every pharmacy item), the
letters use brand names and pharmacy-compounded products (Deprizine, Fanatrex, Synapryn...) that
general vocabularies do not carry, and a table is offline, small, reviewable and tested. A model,
when one is configured, may refine the class of a name missing here; grounding still applies.

Each entry: our ``drug_class`` (coarse, stable, used in filters), DWC's finer class (the words of
DWC's IMR search, see ``dwc-taxonomy.md``) and the names, generic first. A name matches as a whole
word, case-insensitively. The first entry whose name occurs earliest in the request wins.
"""
from __future__ import annotations

import re

DRUG_CLASSES = ["opioid", "nsaid", "muscle_relaxant", "anticonvulsant", "antidepressant", "topical", "compounded",
                "benzodiazepine", "sleep_aid", "ppi_gi", "other"]

# (drug_class, DWC drug class, names)
DRUGS: list[tuple[str, str, list[str]]] = [
    # pharmacy compounds sold under brand names (oral suspensions and topical kits)
    ("compounded", "Topical Compounds", ["Deprizine", "Fanatrex", "Synapryn", "Tabradol", "Ketophene", "Dicopanol",
                                         "Flurbiprofen/Cyclobenzaprine", "Terocin", "Terocin patch", "Lidopro", "Theraflex",
                                         "Medrox", "Mentherm", "Flurbitrac", "Gabaclotram", "Cyclophene", "Genicin",
                                         "Somnicin", "Flurlido", "Capsaicin/Menthol"]),
    ("opioid", "Opioids", ["hydrocodone", "Norco", "Vicodin", "Lortab", "Hysingla", "Zohydro", "oxycodone", "OxyContin",
                           "Percocet", "Roxicodone", "Endocet", "Xtampza", "tramadol", "Ultram", "Ultracet", "Nucynta",
                           "tapentadol", "morphine", "MS Contin", "Kadian", "fentanyl", "Duragesic", "methadone",
                           "buprenorphine", "Butrans", "Suboxone", "Belbuca", "hydromorphone", "Dilaudid", "Exalgo",
                           "oxymorphone", "Opana", "codeine", "Tylenol with codeine", "Tylenol #3", "Tylenol No. 3",
                           "Fioricet with codeine", "meperidine", "Demerol", "Conzip", "levorphanol", "opioids?",
                           "narcotics?"]),
    ("nsaid", "NSAID", ["ibuprofen", "Motrin", "Advil", "naproxen", "Naprosyn", "Anaprox", "Aleve", "Naprelan",
                        "meloxicam", "Mobic", "celecoxib", "Celebrex", "diclofenac", "Voltaren", "Arthrotec",
                        "Zipsor", "Cambia", "etodolac", "Lodine", "nabumetone", "Relafen", "ketorolac", "Toradol",
                        "indomethacin", "Indocin", "Tivorbex", "ketoprofen", "piroxicam", "Feldene", "oxaprozin",
                        "Daypro", "sulindac", "Clinoril", "fenoprofen", "Nalfon", "Fenortho", "salsalate",
                        "diflunisal", "Duexis", "Vimovo", "flurbiprofen", "NSAIDs?", "anti-inflammator(?:y|ies)"]),
    ("muscle_relaxant", "Muscle Relaxant", ["cyclobenzaprine", "Flexeril", "Fexmid", "Amrix", "tizanidine", "Zanaflex",
                                            "baclofen", "Lioresal", "carisoprodol", "Soma", "methocarbamol", "Robaxin",
                                            "metaxalone", "Skelaxin", "orphenadrine", "Norflex", "chlorzoxazone",
                                            "Lorzone", "Parafon", "dantrolene", "muscle relaxants?"]),
    ("anticonvulsant", "Anti-epilepsy drugs", ["gabapentin", "Neurontin", "Gralise", "Horizant", "pregabalin", "Lyrica",
                                               "topiramate", "Topamax", "carbamazepine", "Tegretol", "oxcarbazepine",
                                               "Trileptal", "lamotrigine", "Lamictal", "levetiracetam", "Keppra",
                                               "divalproex", "Depakote", "zonisamide", "anti-?epilep\\w+", "anticonvulsants?"]),
    ("antidepressant", "Antidepressant", ["duloxetine", "Cymbalta", "amitriptyline", "Elavil", "nortriptyline",
                                          "Pamelor", "venlafaxine", "Effexor", "desvenlafaxine", "Pristiq", "sertraline",
                                          "Zoloft", "fluoxetine", "Prozac", "paroxetine", "Paxil", "citalopram",
                                          "Celexa", "escitalopram", "Lexapro", "bupropion", "Wellbutrin", "mirtazapine",
                                          "Remeron", "Savella", "milnacipran", "Trintellix", "Viibryd", "doxepin",
                                          "antidepressants?"]),
    ("benzodiazepine", "Benzodiazepine", ["alprazolam", "Xanax", "lorazepam", "Ativan", "clonazepam", "Klonopin",
                                          "diazepam", "Valium", "temazepam", "Restoril", "chlordiazepoxide", "Librium",
                                          "benzodiazepines?"]),
    ("sleep_aid", "Sedative-hypnotics", ["zolpidem", "Ambien", "Intermezzo", "eszopiclone", "Lunesta", "zaleplon",
                                         "Sonata", "suvorexant", "Belsomra", "ramelteon", "Rozerem", "trazodone",
                                         "Desyrel", "melatonin", "Silenor", "sleep aids?", "hypnotics?"]),
    ("ppi_gi", "Proton Pump Inhibitors", ["omeprazole", "Prilosec", "pantoprazole", "Protonix", "esomeprazole",
                                          "Nexium", "lansoprazole", "Prevacid", "rabeprazole", "Aciphex", "dexlansoprazole",
                                          "Dexilant", "proton pump inhibitors?", "PPIs?"]),
    ("ppi_gi", "H2 Blocker", ["ranitidine", "Zantac", "famotidine", "Pepcid", "cimetidine", "Tagamet"]),
    ("ppi_gi", "GI Agents", ["sucralfate", "Carafate", "docusate", "Colace", "senna", "Senokot", "Sennosides",
                             "lactulose", "Amitiza", "lubiprostone", "Movantik", "naloxegol", "Relistor", "Linzess",
                             "bisacodyl", "Dulcolax", "Miralax", "polyethylene glycol", "stool softeners?", "laxatives?"]),
    ("other", "Antiemetic", ["ondansetron", "Zofran", "promethazine", "Phenergan", "metoclopramide", "Reglan",
                             "prochlorperazine", "meclizine", "antiemetics?"]),
    ("topical", "Topical Analgesics", ["lidocaine", "Lidoderm", "Flector", "Pennsaid", "capsaicin", "Zostrix",
                                       "menthol", "methyl salicylate", "Bengay", "Biofreeze", "Salonpas", "Icy Hot",
                                       "Voltaren gel", "diclofenac gel", "diclofenac sodium gel", "Duraflex",
                                       "topical analgesics?"]),
    ("other", "Misc Analgesics", ["acetaminophen", "Tylenol", "APAP", "Fioricet", "butalbital", "aspirin", "Excedrin"]),
    ("other", "Antimigraine Agent", ["sumatriptan", "Imitrex", "rizatriptan", "Maxalt", "Fioricet", "Treximet"]),
    ("other", "Antihistamine", ["hydroxyzine", "Vistaril", "Atarax", "diphenhydramine", "Benadryl", "cetirizine"]),
    ("other", "Atypical Antipsychotic", ["quetiapine", "Seroquel", "aripiprazole", "Abilify", "olanzapine", "risperidone"]),
    ("other", "AntiAnxiety", ["buspirone", "Buspar"]),
    ("other", "Stimulants", ["modafinil", "Provigil", "armodafinil", "Nuvigil", "methylphenidate", "Adderall"]),
    ("other", "Opoid Antagonist", ["naloxone", "Narcan", "naltrexone"]),
    ("other", "Impotence Agents", ["sildenafil", "Viagra", "tadalafil", "Cialis"]),
    ("other", "Antihypertensive", ["lisinopril", "amlodipine", "losartan", "clonidine", "hydrochlorothiazide"]),
    ("other", "Antidiabetics", ["metformin", "glipizide", "insulin"]),
    ("other", "Statin", ["atorvastatin", "Lipitor", "simvastatin", "rosuvastatin", "Crestor", "pravastatin"]),
    ("other", "Adrenal Cortical Steroids", ["prednisone", "methylprednisolone", "Medrol", "dexamethasone", "Decadron"]),
    ("other", "Nutritional Products", ["Theramine", "Sentra", "Trepadone", "Gabadone", "vitamin D", "vitamin B12",
                                       "medical foods?"]),
    ("other", "Cannabinoids", ["dronabinol", "Marinol", "cannabis", "marijuana"]),
    ("other", "Anti-infectives", ["cephalexin", "Keflex", "amoxicillin", "ciprofloxacin", "Bactrim", "doxycycline",
                                  "clindamycin", "antibiotics?"]),
    ("other", "Anti-coagulant", ["warfarin", "Coumadin", "enoxaparin", "Lovenox", "Xarelto", "rivaroxaban", "Eliquis",
                                 "apixaban"]),
    ("other", "Viscosupplementation", []),  # injections: categorised as injection, class kept for the DWC map
]

# DWC puts generic topical NSAID gels and patches under Topical Analgesics; a compounded cream of
# several drugs under Topical Compounds. "topical"/"cream"/"gel"/"patch"/"ointment" beside an NSAID
# or a muscle relaxant name therefore makes it topical (or compounded when 2+ drugs are mixed).
_TOPICAL_FORM = re.compile(r"\b(?:topical|cream|gel|patch(?:es)?|ointment|lotion|transdermal|compound(?:ed)?|"
                           r"roll-?on|spray|solution\s+\d)", re.IGNORECASE)
_COMPOUND = re.compile(r"\bcompound(?:ed)?\b|\d+(?:\.\d+)?\s*%\s*/|/\s*\w+\s+\d+(?:\.\d+)?\s*%", re.IGNORECASE)

_ENTRIES = [(cls, dwc, n) for cls, dwc, names in DRUGS for n in names]


def _pat(name: str) -> str:
    """A table name as a regex: plain names are literal, names with ``?``/``(``/``\\`` are patterns."""
    return name if any(c in name for c in "?(\\") else re.escape(name)


_ANY = re.compile("|".join(rf"(?P<d{i}>\b{_pat(n)}\b)" for i, (_, _, n) in enumerate(_ENTRIES)), re.IGNORECASE)
# One pattern for every name (no groups), for the category table: a request naming a drug is a medication.
NAMES_PATTERN = r"\b(?:" + "|".join(_pat(n) for _, _, n in _ENTRIES) + r")\b"


def drugs_in(text: str) -> list[tuple[str, str, str, int, int]]:
    """Every drug name in ``text``: (name as written, drug_class, dwc_class, start, end), in text order."""
    out = []
    for m in _ANY.finditer(text):
        cls, dwc, _ = _ENTRIES[int(m.lastgroup[1:])]
        out.append((m.group(), cls, dwc, m.start(), m.end()))
    return out


def classify(text: str) -> tuple[str, str, str, int, int] | None:
    """The drug a request names and its class: (drug, drug_class, dwc_class, start, end), or None.

    A topical form of an oral drug class is ``topical``; a mix of drugs in one cream/compound is
    ``compounded``. ``drug`` is the name as the letter writes it.
    """
    hits = drugs_in(text)
    if not hits:
        return None
    name, cls, dwc, s, e = hits[0]
    distinct = {h[0].lower() for h in hits if h[1] not in ("other",)}
    topical_form = _TOPICAL_FORM.search(text)
    if cls != "compounded" and topical_form:
        if len(distinct) >= 2 or _COMPOUND.search(text):
            cls, dwc = "compounded", "Topical Compounds"
        elif cls in ("nsaid", "muscle_relaxant", "anticonvulsant", "antidepressant", "other"):
            cls, dwc = "topical", "Topical Analgesics"
    return name, cls, dwc, s, e
