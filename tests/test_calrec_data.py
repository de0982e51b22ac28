"""CALRec's data: the raw Amazon 2018 protocol on tiny files written here (time order with file-order ties,
de-duplication, iterative k-core, leave-one-out, plain and .gz), the benchmark-folder readers and their errors,
and the built-in world (fetching the real files: tests/test_data_download.py).
Run: python -m pytest -q tests/test_calrec_data.py"""

import gzip
import json
import logging
import os
from collections import Counter

import pytest

import data
import download
from conftest import real_data

REAL_SCIENTIFIC, needs_scientific = real_data("amazon", "Scientific")


# -----------------------------------------------------------------------------
# raw Amazon 2018 files


def write_lines(path, records):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


META = [{"asin": a, "title": f"Thing {a}", "brand": "Acme", "category": ["Root", "Tools", a], "price": "$1"}
        for a in "ABCDEFG"] + [{"asin": "Z", "title": "", "brand": "Acme"}]  # Z has no title: dropped


def review(user, asin, t):
    return {"reviewerID": user, "asin": asin, "unixReviewTime": t, "overall": 5.0}


def raw_reviews():
    # u1 buys C and B at the same time: file order (C then B) must be kept, never the id order (B, C).
    # u1 reviews A twice: the repeat is dropped. u4 bought Z (no title) and G (bought by nobody else):
    # with k = 3, G (1 user) goes, then u4 (2 items left), then E (2 users left).
    return [review("u1", "A", 10), review("u1", "C", 20), review("u1", "B", 20), review("u1", "A", 30),
            review("u1", "D", 40), review("u1", "E", 50),
            review("u2", "A", 5), review("u2", "B", 6), review("u2", "C", 7), review("u2", "D", 8),
            review("u3", "E", 1), review("u3", "D", 2), review("u3", "C", 3), review("u3", "B", 4),
            review("u3", "A", 9),
            review("u4", "Z", 1), review("u4", "G", 2), review("u4", "E", 3), review("u4", "D", 4)]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_raw_protocol_order_dedup_kcore_leave_one_out(tmp_path, suffix, caplog):
    rev, meta = str(tmp_path / f"Tools_5.json{suffix}"), str(tmp_path / f"meta_Tools.json{suffix}")
    write_lines(rev, raw_reviews())
    write_lines(meta, META + [{"asin": "C", "title": "A second record of C"}, {"asin": "Z", "title": "Z"}])
    with caplog.at_level(logging.INFO):
        d = download.read_amazon_raw(rev, meta, min_count=3)
    assert "meta_Tools.json" + suffix + ": 2 records of an ASIN read before, skipped" in caplog.text
    assert "; 1 repeat reviews of an item by its user dropped (the first kept);" in caplog.text  # u1's second A
    assert d.name == "Tools"
    # G goes (1 user), then u4 (2 items left), then E (2 users left): a cascade of the iterative k-core
    assert d.item_keys == ["A", "B", "C", "D"]  # indices follow sorted ASINs
    assert d.items[2] == {"Title": "Thing C", "Category": "Tools C", "Brand": "Acme", "Price": "$1"}
    name = dict(enumerate(d.item_keys))
    seqs = {tuple(name[i] for i in h + [t]) for h, t in d.test}
    assert seqs == {("A", "C", "B", "D"), ("A", "B", "C", "D"), ("D", "C", "B", "A")}
    valid = {tuple(name[i] for i in h + [t]) for h, t in d.valid}
    assert valid == {("A", "C", "B"), ("A", "B", "C"), ("D", "C", "B")}
    train = sorted(tuple(name[i] for i in h + [t]) for h, t in d.train)
    assert train == sorted([("A", "C"), ("A", "B"), ("D", "C")])
    assert sorted(tuple(name[i] for i in s) for s in d.train_sequences) == sorted([("A", "C"), ("A", "B"), ("D", "C")])


def test_raw_metadata_entities_decoded_markup_left_out_and_long_titles_kept(tmp_path, caplog):
    long_title = "iLLumiShield - New Nintendo 3DS XL Screen Protector " + "with a long description " * 12  # 340 chars
    meta = [dict(m) for m in META]
    meta[0].update(title="Pok&eacute;mon Moon", brand="Procter &amp; Gamble",
                   category=["Root", "Test, Measure &amp; Inspect", '<span class="x">Sale</span>'])
    meta[1].update(title=long_title, price="$12.99 - $1,015.00")
    meta[2].update(title='<div id="nav">menu</div>')  # page markup, not a title: C is dropped
    # tags within a value left out; style rules leaked into a price (as in Amazon 2018's files), or a price that
    # is no price, missing
    meta[3].update(title="Widget <b>Bold</b> Zero<br/>", price=".a-box-inner{background-color:#fff}#a .x{color:gray}")
    meta[4].update(price="Currently unavailable.")
    # '<' as text: escaped by the page ('&lt;3', '&lt;b&gt;'), or not before a letter ('R < 10k > 1k'); a value, or
    # a category, that shows nothing once its tags are left out and its entities decoded is missing
    meta[6].update(title="&lt;3 Heart, R < 10k > 1k &lt;b&gt;", brand="\u200b<br>", category=["Root", "&#8203;", "G"])
    rev, path = str(tmp_path / "Tools_5.json"), str(tmp_path / "meta_Tools.json")
    write_lines(rev, raw_reviews())
    write_lines(path, meta)
    with caplog.at_level(logging.INFO):
        d = download.read_amazon_raw(rev, path, min_count=1)
    items = dict(zip(d.item_keys, d.items))
    assert items["A"] == {"Title": "Pokémon Moon", "Category": "Test, Measure & Inspect", "Brand": "Procter & Gamble",
                          "Price": "$1"}
    assert items["B"] == {"Title": long_title.strip(), "Category": "Tools B", "Brand": "Acme",
                          "Price": "$12.99 - $1,015.00"} and "C" not in items
    assert items["D"]["Title"] == "Widget Bold Zero" and "Price" not in items["D"] and "Price" not in items["E"]
    assert items["G"] == {"Title": "<3 Heart, R < 10k > 1k <b>", "Category": "G", "Price": "$1"}
    assert "treated as missing: title 1, price 2" in caplog.text


def test_iterative_kcore_repeats_until_stable(tmp_path):
    # with k = 2: W, V and R have one user each and go; that leaves u3, u5 and u6 with one item each, so
    # they go; that leaves Q with no user. Only X and Y (bought by u1 and u2) survive.
    meta = [{"asin": a, "title": a} for a in "XYWVQR"]
    reviews = [review("u1", "X", 1), review("u1", "Y", 2), review("u2", "X", 1), review("u2", "Y", 2),
               review("u3", "W", 1), review("u3", "X", 2),
               review("u5", "V", 1), review("u5", "Q", 2), review("u6", "Q", 1), review("u6", "R", 2)]
    write_lines(str(tmp_path / "r_5.json"), reviews)
    write_lines(str(tmp_path / "meta.json"), meta)
    d = download.read_amazon_raw(str(tmp_path / "r_5.json"), str(tmp_path / "meta.json"), min_count=2)
    assert d.item_keys == ["X", "Y"]


def test_raw_reader_errors_name_file_and_line(tmp_path):
    meta = str(tmp_path / "meta.json")
    write_lines(meta, META)
    bad = str(tmp_path / "bad_5.json")
    write_lines(bad, [review("u1", "A", 1), "{not json"])
    with pytest.raises(data.UserError, match=r"bad_5\.json:2:2: not a JSON object \(Expecting property name enclosed in double quotes\)$"):
        download.read_amazon_raw(bad, meta)
    write_lines(bad, [review("u1", "A", 1), {"reviewerID": "u2", "asin": "A"}])
    with pytest.raises(data.UserError, match=r"bad_5\.json:2: record has no 'unixReviewTime'"):
        download.read_amazon_raw(bad, meta)
    with pytest.raises(data.UserError, match="nowhere.json"):
        download.read_amazon_raw(str(tmp_path / "nowhere.json"), meta)


# -----------------------------------------------------------------------------
# benchmark folders (RecBole / UniSRec atomic files)


def write(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


INTER = ["user_id:token\titem_id_list:token_seq\titem_id:token"]


def text_folder(tmp_path, name="Sci", train_rows=("0\t0\t1",)):
    folder = tmp_path / name
    folder.mkdir()
    write(folder / f"{name}.text", ["item_id:token\ttext:token_seq",
                                    "AS1\tDrill bit 1.5 mm. Dr. Pick. Root Tools Bits. Bosch. ",
                                    "AS2\tSaw. Root Tools Saws. . ",
                                    "AS3\tGlue. Root Glue. Gorilla. "])
    write(folder / f"{name}.item2index", ["AS1\t0", "AS2\t1", "AS3\t2"])
    write(folder / f"{name}.train.inter", INTER + list(train_rows))
    write(folder / f"{name}.valid.inter", INTER + ["0\t0 1\t2"])
    write(folder / f"{name}.test.inter", INTER + ["0\t0 1 2\t1"])
    return str(folder)


def test_text_variant_splits_attributes_and_drops_the_category_root(tmp_path, caplog):
    caplog.set_level("INFO")
    d = data.read_atomic(text_folder(tmp_path))
    assert d.items[0] == {"Title": "Drill bit 1.5 mm. Dr. Pick", "Category": "Tools Bits", "Brand": "Bosch"}
    assert d.items[1] == {"Title": "Saw", "Category": "Tools Saws"}  # no brand: a counted missing value
    assert "Brand 1" in caplog.text
    assert d.test == [([0, 1, 2], 1)] and d.valid == [([0, 1], 2)] and d.train == [([0], 1)]
    assert d.train_sequences == [[0, 1]]


def test_blank_lines_are_skipped_in_item2index_as_in_the_inter_files(tmp_path):
    folder = text_folder(tmp_path)
    with open(os.path.join(folder, "Sci.item2index"), "a", encoding="utf-8") as f:
        f.write("\n \n")
    assert data.read_atomic(folder).item_keys == ["AS1", "AS2", "AS3"]


def test_targets_in_their_own_history_are_counted_in_a_warning(tmp_path, caplog):
    data.read_atomic(text_folder(tmp_path))  # test: 0 1 2 -> 1, a target in its history; valid: 0 1 -> 2
    assert [r.getMessage().split("/")[-1] for r in caplog.records if r.levelname == "WARNING"] == [
        "Sci.test.inter: 1 of 1 targets are in their user's history, which the ranking excludes: they count as misses"]


def test_text_variant_finds_the_category_path_by_its_root_when_a_title_or_brand_holds_a_dot(tmp_path):
    folder = tmp_path / "Sci"
    folder.mkdir()
    write(folder / "Sci.text", ["item_id:token\ttext:token_seq",
                                "A1\tMr. Heater Kit 3 in. x 2 ft. Root Tools Fittings. Mr. Heater. ",  # '. ' everywhere
                                "A2\tSaw. Root Tools Saws. ",                 # UniSRec writes no brand it lacks
                                "A3\tGlue. Root. Gorilla. ",                   # a path that is only the root
                                "A4\tTape. Root Tools Tape. J.V. Converting. "])
    write(folder / "Sci.item2index", ["A1\t0", "A2\t1", "A3\t2", "A4\t3"])
    for split, row in (("train", "0\t0\t1"), ("valid", "0\t0 1\t2"), ("test", "0\t0 1 2\t3")):
        write(folder / f"Sci.{split}.inter", INTER + [row])
    assert data.read_atomic(str(folder)).items == [
        {"Title": "Mr. Heater Kit 3 in. x 2 ft", "Category": "Tools Fittings", "Brand": "Mr. Heater"},
        {"Title": "Saw", "Category": "Tools Saws"}, {"Title": "Glue", "Brand": "Gorilla"},
        {"Title": "Tape", "Category": "Tools Tape", "Brand": "J.V. Converting"}]


def test_text_variant_without_the_root_splits_at_an_empty_path_or_at_the_longest_start_of_the_root():
    # UniSRec writes an empty category as '. ' ('title. . brand. '); a path of a branch most items are not in holds
    # only a start of the root: each split where its path is, though the brand holds '. ' (values worked out by hand)
    for text, root, want in (
            ("Wheel (Pack of 1). . Norton Abrasives - St. Gobain. ", "Industrial & Scientific",
             ["Wheel (Pack of 1)", "", "Norton Abrasives - St. Gobain"]),
            ("Mr. Heater Big Buddy. . Mr. Heater. ", "", ["Mr. Heater Big Buddy", "", "Mr. Heater"]),  # no root at all
            ("Ink 8. Office Products Office Electronics Printers. Dr. Ink Co. ", "Office Products Office & School",
             ["Ink 8", "Electronics Printers", "Dr. Ink Co"]),
            ("Tape. . . ", "Root", ["Tape", "", ""]),
            ("Widget Pro. ", "Root", ["Widget Pro", "", ""]),  # no category, no brand: a title alone, not a brand
            ("Widget Pro", "", ["Widget Pro", "", ""]),  # one description an item (a data set without categories)
            ("Mr. Heater Big Buddy", "", ["Mr. Heater Big Buddy", "", ""]),  # titles only: a title may hold '. '
            ("Widget. Tools Saws", "Root", ["Widget. Tools Saws", "", ""])):  # two parts: which is which? both kept
        assert data._split_text(text, root) == want, (text, root)
        stripped = text.rstrip()  # the line's last space removed (an editor, `git` whitespace fixes): the same parts
        assert data._split_text(stripped, root) == want, (stripped, root)


def test_a_category_root_stops_before_a_level_that_repeats_its_word():
    # Office Products' levels: 'Office & School Supplies', 'Office Electronics', ...: every path holds 'Office
    # Products Office', but the root is 'Office Products' and each item keeps its level's whole name
    subs = ["Office & School Supplies Paper", "Office Electronics Printers", "Office Furniture & Lighting Chairs"]
    texts = [f"Item {i}. Office Products {subs[i % 3]}. Brand{i % 7}. " for i in range(30)]
    assert data._category_root(texts) == "Office Products"
    assert data._split_text(texts[1], "Office Products") == ["Item 1", "Office Electronics Printers", "Brand1"]
    texts = [f"Item {i}. Industrial & Scientific Lab {i % 4}. Acme. " for i in range(30)]  # no word again
    assert data._category_root(texts) == "Industrial & Scientific Lab"


def test_a_category_root_tied_with_a_brand_is_the_one_written_first_whatever_the_hash_seed():
    # every item holds the same path and brand: each is a candidate root of every text; the path comes first in
    # UniSRec's texts, so it is the root, in every process (a set's order would change with PYTHONHASHSEED)
    for path, brand in [("Lab Supplies Beakers", "Acme"), ("Tools Saws", "Bosch"), ("Kitchen", "Zwilling"),
                        ("Garden Hoses", "Gardena"), ("Office Pens", "Pilot"), ("Toys", "Lego"),
                        ("Audio Cables", "Belkin"), ("Paint Brushes", "Purdy")]:
        texts = [f"Widget {i}. {path}. {brand}. " for i in range(5)]
        assert data._category_root(texts) == path


def test_a_text_file_of_no_items_is_refused_not_read_forever(tmp_path):
    folder = text_folder(tmp_path)
    write(f"{folder}/Sci.text", ["item_id:token\ttext:token_seq"])  # its category root is sought among no texts
    with pytest.raises(data.UserError, match=r"Sci\.train\.inter:2: unknown item id '0'"):
        data.read_atomic(folder)


def test_a_user_s_training_part_is_whole_when_histories_are_cut_at_50_items(tmp_path):
    # UniSRec's rows: newest first, each history the last 50 items at most; a user of 60 training items
    folder = text_folder(tmp_path, train_rows=())
    items = [f"A{i}" for i in range(62)]
    write(f"{folder}/Sci.text", ["item_id:token\ttext:token_seq"] + [f"{a}\tItem {a}. Root Tools. Brand. " for a in items])
    write(f"{folder}/Sci.item2index", [f"{a}\t{i}" for i, a in enumerate(items)])
    rows = [f"0\t{' '.join(map(str, range(max(0, t - 50), t)))}\t{t}" for t in range(59, 0, -1)]
    for split, lines in (("train", rows), ("valid", [f"0\t{' '.join(map(str, range(10, 60)))}\t60"]),
                         ("test", [f"0\t{' '.join(map(str, range(11, 61)))}\t61"])):
        write(f"{folder}/Sci.{split}.inter", INTER + lines)
    assert data.read_atomic(folder).train_sequences == [list(range(60))]
    write(f"{folder}/Sci.train.inter", INTER + rows[::-1])  # oldest first, as data.py amazon writes them
    assert data.read_atomic(folder).train_sequences == [list(range(60))]


def test_a_user_of_three_items_keeps_its_training_part_of_one_item(tmp_path):
    # user 0 bought items 0, 1, 2: no training row (its first item has nothing before it), yet its training part is
    # [0], as leave_one_out makes it (the popularity counts read it); user 1 bought 1, 2, 0, 2: one row, part [1, 2]
    folder = text_folder(tmp_path, train_rows=("1\t1\t2",))
    write(f"{folder}/Sci.valid.inter", INTER + ["0\t0\t1", "1\t1 2\t0"])
    write(f"{folder}/Sci.test.inter", INTER + ["0\t0 1\t2", "1\t1 2 0\t2"])
    parts = data.read_atomic(folder).train_sequences
    assert sorted(parts) == sorted(data.leave_one_out([[0, 1, 2], [1, 2, 0, 2]])[3]) == [[0], [1, 2]], parts


def test_item_variant_takes_every_text_column(tmp_path):
    folder = tmp_path / "Toys"
    folder.mkdir()
    write(folder / "Toys.item", ["item_id:token\ttitle:token_seq\tbrand:token\tsales_type:token",
                                 "7\tYo-yo\tDuncan\tToys", "9\tKite\t\tOutdoor"])
    for split, row in (("train", "u\t9\t9"), ("valid", "u\t9 9\t7"), ("test", "u\t9 9 7\t9")):
        write(folder / f"Toys.{split}.inter", INTER + [row])
    d = data.read_atomic(str(folder))
    assert d.attributes == ("Title", "Brand", "Sales Type")
    assert d.items == [{"Title": "Yo-yo", "Brand": "Duncan", "Sales Type": "Toys"},
                       {"Title": "Kite", "Sales Type": "Outdoor"}]
    assert d.item_keys == ["7", "9"] and d.test == [([1, 1, 0], 1)]
    assert data.item_text(d.items[1], d.attributes) == "Title: Kite, Brand: Unknown, Sales Type: Outdoor"


@pytest.mark.parametrize("row, message", [
    ("0\t0 5\t1", r"Sci\.train\.inter:3: unknown item id '5'"),
    # in ASCII: an id unlike an item's only in how its accents are encoded shows how
    ("0\t0 cafe\u0301\t1", r"Sci\.train\.inter:3: unknown item id 'cafe\\u0301'"),
    ("0\t\t1", r"Sci\.train\.inter:3: empty history"),
    ("0\t0", r"Sci\.train\.inter:3: expected 3 tab-separated columns"),
])
def test_bad_inter_rows_name_file_and_line(tmp_path, row, message):
    with pytest.raises(data.UserError, match=message):
        data.read_atomic(text_folder(tmp_path, train_rows=("0\t0\t1", row)))


@pytest.mark.parametrize("file, lines, message", [
    ("Sci.item2index", ["AS1\t0", "AS2\t1", "AS3\t2", "AS1\t3"], r"Sci\.item2index:4: item AS1 listed twice"),
    ("Sci.item2index", ["AS1\t0", "AS2\t1", "AS3\t1"], r"Sci\.item2index:3: id 1 already given to line 2"),
    ("Sci.text", ["item_id:token\ttext:token_seq", "AS1\tDrill. Root Tools. Bosch. ", "AS2\tSaw. Root Tools. . ",
                  "AS3\tGlue. Root Glue. Gorilla. ", "AS2\tSaw, again. Root Tools. . "],
     r"Sci\.text:5: item AS2 listed twice"),
])
def test_an_item_twice_in_the_text_variant_is_an_error(tmp_path, file, lines, message):
    folder = text_folder(tmp_path)
    write(f"{folder}/{file}", lines)
    with pytest.raises(data.UserError, match=message):
        data.read_atomic(folder)


def test_item_without_text_is_an_error(tmp_path):
    folder = tmp_path / "Toys"
    folder.mkdir()
    write(folder / "Toys.item", ["item_id:token\ttitle:token_seq", "7\tYo-yo", "9\t "])
    with pytest.raises(data.UserError, match=r"Toys\.item:3: item 9 has no text"):
        data.read_atomic(str(folder))
    with pytest.raises(data.UserError, match="neither"):
        data.read_atomic(str(tmp_path))


def toys_folder(tmp_path, item_lines, name="Toys"):
    """A benchmark folder of the .item variant: items 7 and 9 (whatever item_lines holds), one user."""
    folder = tmp_path / name
    folder.mkdir()
    write(folder / f"{name}.item", item_lines)
    for split, row in (("train", "u\t9\t9"), ("valid", "u\t9 9\t7"), ("test", "u\t9 9 7\t9")):
        write(folder / f"{name}.{split}.inter", INTER + [row])
    return folder


@pytest.mark.parametrize("file, header, message", [
    ("Toys.item", "item_id:token\ttitle:token_seq\ttitle:token_seq",
     r"Toys\.item:1: column 3 \('title:token_seq'\) repeats the name of column 2 \('title:token_seq'\)"),
    ("Toys.item", "item_id:token\ttitle:token_seq\tTITLE", r"Toys\.item:1: column 3 \('TITLE'\) repeats the name"),
    ("Toys.item", "item_id:token\tsales_type\tSales Type:token", r"Toys\.item:1: column 3 .* repeats the name"),
    ("Toys.item", "item_id:token\t:token_seq\tbrand", r"Toys\.item:1: column 2 \(':token_seq'\) has no name"),
    ("Toys.valid.inter", INTER[0] + "\titem_id:token", r"Toys\.valid\.inter:1: column 4 \('item_id:token'\) repeats"),
])
def test_a_column_name_twice_or_none_is_an_error(tmp_path, file, header, message):
    folder = toys_folder(tmp_path, ["item_id:token\ttitle:token_seq\tbrand:token", "7\tYo-yo\tDuncan", "9\tKite\t"])
    write(folder / file, [header] + (folder / file).read_text().splitlines()[1:])  # the header is read first
    with pytest.raises(data.UserError, match=message):
        data.read_atomic(str(folder))


def test_item_ids_are_tokens(tmp_path):
    folder = toys_folder(tmp_path, ["item_id:token\ttitle:token_seq", "7 \tYo-yo", " 9\tKite"])
    assert data.read_atomic(str(folder)).item_keys == ["7", "9"]  # as the .inter files' ids, split on whitespace
    write(folder / "Toys.item", ["item_id:token\ttitle:token_seq", "7\tYo-yo", " \tKite"])
    with pytest.raises(data.UserError, match=r"Toys\.item:3: item id \'\' is empty or holds a space"):
        data.read_atomic(str(folder))
    sci = text_folder(tmp_path)
    write(f"{sci}/Sci.item2index", ["AS1 \t0", "AS2\t1", "\t2"])
    with pytest.raises(data.UserError, match=r"Sci\.item2index:3: item id \'\' is empty or holds a space"):
        data.read_atomic(sci)
    write(f"{sci}/Sci.item2index", ["AS1 \t0", "AS2\t1", "AS3\t\u0662"])  # an Arabic-Indic 2
    with pytest.raises(data.UserError, match=r"Sci\.item2index:3: expected 'ASIN<TAB>integer id'"):
        data.read_atomic(sci)


def test_the_folder_name_does_not_depend_on_how_the_path_is_written(tmp_path, monkeypatch):
    folder = toys_folder(tmp_path, ["item_id:token\ttitle:token_seq", "7\tYo-yo", "9\tKite"])
    monkeypatch.chdir(folder)
    for path in (f"{folder}/", f"{folder}/.", ".", "./", "../Toys"):
        assert data.read_atomic(path).name == "Toys", path


def test_a_folder_renamed_or_linked_under_another_name_is_named_by_its_files(tmp_path):
    sci = text_folder(tmp_path)
    os.symlink(sci, tmp_path / "my_link")
    assert (data.read_atomic(str(tmp_path / "my_link")).name, data.read_atomic(sci).name) == ("Sci", "Sci")
    os.rename(sci, tmp_path / "Renamed")
    domain = data.read_atomic(str(tmp_path / "Renamed"))
    assert (domain.name, domain.item_keys) == ("Sci", ["AS1", "AS2", "AS3"])
    (tmp_path / "Renamed" / "._Sci.train.inter").write_bytes(b"\0\5\26\7")  # a Mac's AppleDouble file: hidden
    assert data.read_atomic(str(tmp_path / "Renamed")).name == "Sci"
    write(tmp_path / "Renamed" / "Two.train.inter", INTER)  # two names: which to read is not guessed
    with pytest.raises(data.UserError, match=r"Renamed: holds 2 benchmarks \(Sci, Two\); one folder each$"):
        data.read_atomic(str(tmp_path / "Renamed"))


def test_the_folder_that_holds_benchmark_folders_names_them(tmp_path):
    (tmp_path / "amazon").mkdir()
    text_folder(tmp_path / "amazon")  # amazon/Sci, beside its downloads, as python data.py amazon --out amazon writes
    with pytest.raises(data.UserError, match=f"{tmp_path}/amazon: has neither amazon.item nor amazon.text \\(a "
                       f"benchmark folder\\); it holds {tmp_path}/amazon/Sci: give those$"):
        data.read_atomic(str(tmp_path / "amazon"))


def test_an_item_file_that_is_a_folder_is_named(tmp_path):
    folder = toys_folder(tmp_path, ["item_id:token\ttitle:token_seq", "7\tYo-yo", "9\tKite"])
    (folder / "Toys.item").unlink()
    (folder / "Toys.item").mkdir()
    with pytest.raises(data.UserError, match=r"Toys\.item: is a folder, not a file"):
        data.read_atomic(str(folder))


@needs_scientific
def test_real_scientific_folder_reads_as_documented(caplog):
    d = data.read_atomic(REAL_SCIENTIFIC)
    for split in ("valid", "test"):  # the targets in their own history, counted from the file's columns
        with open(os.path.join(REAL_SCIENTIFIC, f"Scientific.{split}.inter"), encoding="utf-8") as f:
            rows = [line.rstrip("\n").split("\t") for line in f][1:]
        repeated = sum(target in history.split() for _, history, target in rows)
        assert f"Scientific.{split}.inter: {repeated} of {len(rows)} targets are in their user's history" in caplog.text
    assert d.n_items == 4385 and len(d.test) == 8442 and len(d.valid) == 8442
    assert len(d.train) == 34101  # the lines of Scientific.train.inter, less its header
    assert d.item_keys[0] == "B0000223SI" and d.items[0]["Brand"] == "PORTER-CABLE"
    assert not d.items[0]["Category"].startswith("Industrial & Scientific")


# -----------------------------------------------------------------------------
# the built-in world


def test_builtin_world_is_deterministic_multi_domain_with_cold_items():
    a, b = data.make_world(seed=3), data.make_world(seed=3)
    assert [d.test for d in a] == [d.test for d in b] and [d.items for d in a] == [d.items for d in b]
    assert data.make_world(seed=4)[0].test != a[0].test
    assert len(a) >= 3
    brands = [{it["Brand"] for it in d.items} for d in a]
    assert brands[0] == brands[1] == brands[2]  # shared latent structure: the same brands everywhere
    for d in a:
        assert set(d.attributes) == {"Title", "Category", "Brand", "Price"}
        trained = Counter(t for _, t in d.train) + Counter(i for h, _ in d.train for i in h)
        cold = [t for _, t in d.test if trained[t] == 0]
        assert len(cold) > 0.02 * len(d.test)  # test targets never seen in training
        for h, t in d.test:
            assert t not in h and len(set(h)) == len(h)


def test_item_file_columns_are_found_by_header_name(tmp_path):
    folder = tmp_path / "Toys"
    folder.mkdir()
    (folder / "Toys.item").write_text("title:token_seq\titem_id:token\nRed ball\t7\nBlue kite\t3\n")
    for split, (h, t) in (("train", ("7", "3")), ("valid", ("7 3", "3")), ("test", ("7 3 3", "7"))):
        (folder / f"Toys.{split}.inter").write_text(
            f"user_id:token\titem_id_list:token_seq\titem_id:token\nu1\t{h}\t{t}\n")
    d = data.read_atomic(str(folder))
    assert d.item_keys == ["7", "3"] and d.items[0]["Title"] == "Red ball"
    assert d.test == [([0, 1, 1], 0)]


def test_reading_a_long_user_holds_memory_in_proportion_to_the_rows(tmp_path):
    """A user of n items is n rows of at most 50 items of history (UniSRec's cut): checking them holds about
    50 n items at once, not every row's whole prefix (n²/2: a user of 24,000 items took 2.5 GB)."""
    import tracemalloc
    folder, n = tmp_path / "Long", 6000
    os.makedirs(folder)
    (folder / "Long.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"{i}\tthing {i}\n" for i in
                                                                                      range(100)))
    users = {0: [i % 100 for i in range(n)], **{u: [(u + j) % 100 for j in range(6)] for u in range(1, 4)}}

    def row(u, items, end):
        return f"{u}\t{' '.join(map(str, items[max(0, end - 50):end]))}\t{items[end]}\n"
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    for split, ends in (("train", lambda s: range(1, len(s) - 2)), ("valid", lambda s: [len(s) - 2]),
                        ("test", lambda s: [len(s) - 1])):
        (folder / f"Long.{split}.inter").write_text(header + "".join(row(u, s, e) for u, s in users.items()
                                                                     for e in ends(s)))
    tracemalloc.start()
    try:
        domain = data.read_atomic(str(folder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert domain.train_sequences[0] == users[0][:-2]  # the long user read whole
    assert peak < 40e6, (f"reading one user of {n} items peaked at {peak / 1e6:.0f} MB (its prefixes: "
                         f"{n * n / 2e6:.0f}M items)")
