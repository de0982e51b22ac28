"""download.py (the command line `python data.py amazon | glue | few-shot`), offline: tiny files in the official
layouts served by a local HTTP server started here (honouring `Range: bytes=N-`), or read through file:// URLs.
Amazon 2018 -> benchmark folders, resumed and broken downloads, GLUE archives -> task folders, LM-BFF's few-shot
splits against an independent draw, and the command line's errors.
Run: python -m pytest -q tests/test_data_download.py"""

import gzip
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
import zipfile
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

import data
import download
import engine
from model import UserError
from test_calrec_data import META, raw_reviews, write_lines
from test_glue_reader import LAYOUTS


@pytest.fixture
def server(tmp_path):
    """Serves the files under .root; .seen records (path, Range header) of every request. With
    .options["ranges"] False it ignores Range headers (answers 200 with the whole file); with
    .options["cut"] = N it announces the whole file but closes the connection after N bytes; "whole" and "from 0"
    answer a range with 206 and the whole file (under the range asked for, or under bytes 0-); .options["length"]
    is the Content-Length it announces, if given."""
    root = tmp_path / "server"
    root.mkdir()
    seen, options = [], {"ranges": True, "cut": None, "length": None}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((urllib.parse.urlsplit(self.path).path, self.headers.get("Range")))
            path = root / urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            if not path.is_file():
                return self.send_error(404, "Not Found")
            body, start = path.read_bytes(), 0
            asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if asked and options["ranges"] is True:
                start = int(asked.group(1))
                if start >= len(body):
                    return self.send_error(416, "Range Not Satisfiable")
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            elif asked and options["ranges"] in ("whole", "from 0"):  # servers that misbehave
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {asked[1] if options['ranges'] == 'whole' else 0}-"
                                                  f"{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", options["length"] or str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:options["cut"]])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}", root=root, seen=seen, options=options)
    httpd.shutdown()
    httpd.server_close()


# -----------------------------------------------------------------------------
# fetch: resuming, starting over, failing with the URL


@pytest.mark.parametrize("ranges", [True, False, "whole", "from 0"])
def test_an_interrupted_download_resumes(server, tmp_path, ranges):
    body = np.random.default_rng(0).bytes(300_000)
    (server.root / "big.bin").write_bytes(body)
    path = str(tmp_path / "dl" / "big.bin")
    server.options["cut"] = 123_457  # the connection drops here
    with pytest.raises(UserError, match=r"/big\.bin: the connection closed after 123457 of 300000 bytes"):
        download.fetch(server.url + "/big.bin", path)
    assert not os.path.exists(path) and os.path.getsize(path + ".part") == 123_457
    server.options.update(cut=None, ranges=ranges)  # ranges False: the server answers 200, the whole file
    assert download.fetch(server.url + "/big.bin", path) == path
    again = [("/big.bin", None)] if ranges in ("whole", "from 0") else []  # a 206 of other bytes than asked for
    assert server.seen == [("/big.bin", None), ("/big.bin", "bytes=123457-")] + again
    with open(path, "rb") as f:
        assert f.read() == body  # byte for byte: resumed on 206, started over on 200
    assert not os.path.exists(path + ".part")
    download.fetch(server.url + "/big.bin", path)  # there already: no request
    assert len(server.seen) == 2 + len(again)


def test_a_part_longer_than_the_file_starts_over(server, tmp_path):
    (server.root / "a.bin").write_bytes(b"0123456789")
    path = str(tmp_path / "a.bin")
    with open(path + ".part", "wb") as f:
        f.write(b"0123456789abc")  # not a prefix of the file (which changed on the server, say)
    download.fetch(server.url + "/a.bin", path)
    assert server.seen == [("/a.bin", "bytes=13-"), ("/a.bin", None)]  # 416, then the whole file
    with open(path, "rb") as f:
        assert f.read() == b"0123456789"


def test_file_urls_start_over(tmp_path):
    source = tmp_path / "mirror" / "a.bin"
    source.parent.mkdir()
    source.write_bytes(b"0123456789")
    path = str(tmp_path / "a.bin")
    with open(path + ".part", "wb") as f:
        f.write(b"01234xx")  # not resumable through file://: read whole again
    download.fetch(source.as_uri(), path)
    with open(path, "rb") as f:
        assert f.read() == b"0123456789"


def test_network_failures_name_the_url(server, tmp_path):
    url = server.url + "/missing.gz"
    with pytest.raises(UserError, match=re.escape(f"{url}: HTTP 404 Not Found; look elsewhere")):
        download.fetch(url, str(tmp_path / "missing.gz"), hint_if_missing="look elsewhere")
    with pytest.raises(UserError, match=r"^http://127\.0\.0\.1:1/x\.gz: .*refused"):
        download.fetch("http://127.0.0.1:1/x.gz", str(tmp_path / "out" / "downloads" / "x.gz"))
    (tmp_path / "kept").mkdir()
    with pytest.raises(UserError, match="HTTP 404"):
        download.fetch(url, str(tmp_path / "kept" / "downloads" / "missing.gz"))
    assert sorted(os.listdir(tmp_path)) == ["kept", "server"] and os.listdir(tmp_path / "kept") == []  # nothing


def test_a_content_length_that_is_no_number_is_a_length_not_known(server, tmp_path):
    (server.root / "a.bin").write_bytes(b"0123456789")
    server.options["length"] = "abc"
    path = download.fetch(server.url + "/a.bin", str(tmp_path / "a.bin"))
    assert open(path, "rb").read() == b"0123456789"


def test_a_download_so_far_that_is_a_link_is_refused_not_written_through(server, tmp_path):
    (server.root / "a.bin").write_bytes(b"0123456789")
    (tmp_path / "mine.txt").write_text("the user's own file")
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "mine.txt", tmp_path / "d" / "a.bin.part")
    with pytest.raises(UserError, match=r"a\.bin\.part: is not a file \(no link\); data\.py keeps its downloads there"):
        download.fetch(server.url + "/a.bin", str(tmp_path / "d" / "a.bin"))
    assert (tmp_path / "mine.txt").read_text() == "the user's own file" and server.seen == []


def test_a_server_that_never_answers_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "TIMEOUT", 0.2)
    with socket.socket() as silent:  # it takes the connection (the system does), and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/x.gz"
        with pytest.raises(UserError, match=re.escape(f"{url}: the server sent nothing for 0.2 s; rerun")):
            download.fetch(url, str(tmp_path / "x.gz"))


# -----------------------------------------------------------------------------
# Amazon 2018 -> benchmark folders

AMAZON_META = [dict(m) for m in META]
AMAZON_META[0]["title"] = "Thing\tA\nwith  spaces"  # item A: a tab, a newline and a double space
del AMAZON_META[1]["price"]                        # item B: no price, an empty cell


def serve_amazon(root):
    """The Amazon 2018 site's layout for a category "Tools"; returns the paths of its two files."""
    reviews, meta = root / "categoryFilesSmall" / "Tools_5.json.gz", root / "metaFiles2" / "meta_Tools.json.gz"
    for path, records in ((reviews, raw_reviews()), (meta, AMAZON_META)):
        path.parent.mkdir()
        write_lines(str(path), records)
    return str(reviews), str(meta)


def test_a_category_with_a_user_of_over_51_items_is_built_with_the_histories_cut(server, tmp_path):
    # three users buy the same 60 items (so every item survives the 3-core), each in another order
    items = [f"I{k}" for k in range(60)]
    orders = [items, items[::-1], items[30:] + items[:30]]
    reviews = [{"reviewerID": f"u{u}", "asin": a, "unixReviewTime": t, "overall": 5.0}
               for u, order in enumerate(orders) for t, a in enumerate(order)]
    meta = [{"asin": a, "title": f"Thing {a}"} for a in items]
    for sub, name, records in (("categoryFilesSmall", "Tools_5.json.gz", reviews),
                               ("metaFiles2", "meta_Tools.json.gz", meta)):
        (server.root / sub).mkdir()
        write_lines(str(server.root / sub / name), records)
    download.prepare_amazon(["Tools"], str(tmp_path / "amazon"), base_url=server.url, min_count=3)
    d = data.read_atomic(str(tmp_path / "amazon" / "Tools"))
    name = dict(enumerate(d.item_keys))
    assert sorted([name[i] for i in h + [t]] for h, t in d.test) == sorted(o[-51:] for o in orders)  # 50 and target
    assert sorted([name[i] for i in seq] for seq in d.train_sequences) == sorted(o[:-2] for o in orders)


def test_written_histories_keep_their_last_50_items_and_read_back_whole(tmp_path):
    sequences = [list(range(70)), [3, 1, 4, 1 + 4, 9], list(range(69, 9, -1))]  # users of 70, 5 and 60 items
    train, valid, test, parts = data.leave_one_out(sequences)
    keys = [f"i{k}" for k in range(70)]
    domain = data.Domain("Long", [{"Title": f"item {k}"} for k in keys], keys, train, valid, test, parts, ("Title",))
    os.makedirs(tmp_path / "Long")
    download.write_benchmark_folder(domain, str(tmp_path / "Long"))
    for split in ("train", "valid", "test"):
        lines = (tmp_path / "Long" / f"Long.{split}.inter").read_text(encoding="utf-8").splitlines()[1:]
        assert max(len(line.split("\t")[1].split()) for line in lines) == 50
    d = data.read_atomic(str(tmp_path / "Long"))
    cut = [[(h[-50:], t) for h, t in split] for split in (train, valid, test)]
    assert (sorted(d.train), d.valid, d.test) == (sorted(cut[0]), cut[1], cut[2])
    assert d.train_sequences == parts  # each user's whole training part, though no row holds all of it


def test_a_category_named_twice_is_built_once(server, tmp_path, caplog):
    caplog.set_level("INFO")
    serve_amazon(server.root)
    download.prepare_amazon(["Tools", "Tools"], str(tmp_path / "amazon"), base_url=server.url, min_count=3)
    assert "already there" not in caplog.text  # not taken for a folder an earlier run built
    assert data.read_atomic(str(tmp_path / "amazon" / "Tools")).item_keys == ["A", "B", "C", "D"]


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_amazon_end_to_end(server, tmp_path, caplog, scheme):
    caplog.set_level("INFO")
    raw_paths = serve_amazon(server.root)
    url = server.url if scheme == "http" else server.root.as_uri()
    out = tmp_path / "amazon"
    os.makedirs(out / "Tools")  # an empty folder is no build to keep: it is built
    download.prepare_amazon(["Tools"], str(out), base_url=url, min_count=3)
    assert sorted(os.listdir(out)) == ["Tools", "downloads"]  # no temporary folder left
    assert sorted(os.listdir(out / "downloads")) == ["Tools_5.json.gz", "meta_Tools.json.gz"]

    d = data.read_atomic(str(out / "Tools"))
    raw = download.read_amazon_raw(*raw_paths, min_count=3)  # the protocol straight on the raw files
    assert d.item_keys == raw.item_keys == ["A", "B", "C", "D"]
    assert d.items == [{k: " ".join(v.split()) for k, v in item.items()} for item in raw.items]
    assert (d.train, d.valid, d.test) == (raw.train, raw.valid, raw.test)
    name = dict(enumerate(d.item_keys))  # and the sequences known by hand (see test_calrec_data)
    assert {tuple(name[i] for i in h + [t]) for h, t in d.test} == {
        ("A", "C", "B", "D"), ("A", "B", "C", "D"), ("D", "C", "B", "A")}

    item_lines = (out / "Tools" / "Tools.item").read_text(encoding="utf-8").split("\n")
    assert item_lines[:3] == ["item_id:token\ttitle:token_seq\tcategory:token_seq\tbrand:token_seq\tprice:token_seq",
                              "A\tThing A with spaces\tTools A\tAcme\t$1", "B\tThing B\tTools B\tAcme\t"]
    test_lines = (out / "Tools" / "Tools.test.inter").read_text(encoding="utf-8").split("\n")
    assert test_lines[0] == "user_id:token\titem_id_list:token_seq\titem_id:token"
    assert sorted(line.split("\t")[0] for line in test_lines[1:] if line) == ["0", "1", "2"]
    assert "Tools: 3 users, 4 items; 3 train, 3 valid and 3 test examples" in caplog.text
    assert ".tmp" not in caplog.text  # no note names the build folder (item B has no price: one would)

    requests = len(server.seen)
    download.prepare_amazon(["Tools"], str(out), base_url=url, min_count=3)  # a rerun leaves the folder alone
    assert "already there, as an earlier data.py built it with its own --min-count; delete it to rebuild" \
        in caplog.text and len(server.seen) == requests
    # the raw files are for `python data.py amazon` to convert; --data refuses them, saying how to convert them
    with pytest.raises(UserError, match="Tools_5.json.gz: raw Amazon 2018 files; convert them"):
        data.read_atomic(str(out / "downloads"))


@pytest.mark.parametrize("damage", ["truncated", "bad crc", "a page"])
def test_a_broken_gzip_is_deleted_and_fetched_again(server, tmp_path, damage):
    good_path, _ = serve_amazon(server.root)
    with open(good_path, "rb") as f:
        good = f.read()
    bad = {"truncated": good[:len(good) // 2], "bad crc": good[:-8] + bytes([good[-8] ^ 1]) + good[-7:],
           "a page": b"\n<!DOCTYPE html><html><body>Please sign in</body></html>"}[damage]  # a proxy's, with 200
    with open(good_path, "wb") as f:
        f.write(bad)
    out = tmp_path / "amazon"
    message = "an HTML page, not the gzip" if damage == "a page" else "not a complete gzip file .*deleted, so a rerun"
    with pytest.raises(UserError, match=r"Tools_5\.json\.gz: " + message):
        download.prepare_amazon(["Tools"], str(out), base_url=server.url, min_count=3)
    assert os.listdir(out) == ["downloads"]  # no Tools folder, finished or temporary
    assert sorted(os.listdir(out / "downloads")) == ["meta_Tools.json.gz"]  # the bad file is gone
    with open(good_path, "wb") as f:
        f.write(good)
    download.prepare_amazon(["Tools"], str(out), base_url=server.url, min_count=3)  # the rerun fetches it again
    assert len(data.read_atomic(str(out / "Tools")).test) == 3


def test_a_download_that_does_not_parse_is_deleted_and_fetched_again(server, tmp_path):
    _, meta_path = serve_amazon(server.root)
    with open(meta_path, "rb") as f:
        good = f.read()
    write_lines(meta_path, ["{'asin': 'A', 'title': 'a Python dict, not JSON'}"])  # a mirror's wrong file
    out = tmp_path / "amazon"
    with pytest.raises(UserError, match=r"meta_Tools\.json\.gz:1:2: not a JSON object \(Expecting property name "
                                        r"enclosed in double quotes\); deleted, so a rerun downloads"):  # line, column
        download.prepare_amazon(["Tools"], str(out), base_url=server.url, min_count=3)
    assert sorted(os.listdir(out / "downloads")) == ["Tools_5.json.gz"]  # the reviews, which did parse, are kept
    with open(meta_path, "wb") as f:
        f.write(good)
    download.prepare_amazon(["Tools"], str(out), base_url=server.url, min_count=3)  # the rerun fetches it again
    assert len(data.read_atomic(str(out / "Tools")).test) == 3


def test_an_unknown_category_or_an_empty_result_is_a_user_error(server, tmp_path):
    url = f"{server.url}/categoryFilesSmall/Nope_5.json.gz"
    with pytest.raises(UserError, match=re.escape(f"{url}: HTTP 404 Not Found; is 'Nope' an Amazon 2018 category")):
        download.prepare_amazon(["Nope"], str(tmp_path / "amazon"), base_url=server.url)
    assert not os.path.exists(tmp_path / "amazon" / "Nope")
    with pytest.raises(UserError, match=r"Nope_5\.json\.gz'; is 'Nope' an Amazon 2018 category"):  # a local mirror too
        download.prepare_amazon(["Nope"], str(tmp_path / "amazon"), base_url=(tmp_path / "mirror").as_uri())
    with pytest.raises(UserError, match="'Video Games': not an Amazon 2018 category file name"):
        download.prepare_amazon(["Video Games"], str(tmp_path / "amazon"), base_url=server.url)
    serve_amazon(server.root)
    with pytest.raises(UserError, match=r"Tools_5\.json\.gz: no user is left after the 5-core"):
        download.prepare_amazon(["Tools"], str(tmp_path / "amazon"), base_url=server.url)  # too few for 5
    assert os.listdir(tmp_path / "amazon") == ["downloads"]
    write_lines(str(server.root / "metaFiles2" / "meta_Tools.json.gz"), [dict(m, asin="X" + m["asin"]) for m in META])
    with pytest.raises(UserError, match=r"meta_Tools\.json\.gz: no record with a title is an item of .*Tools_5\.json"
                                        r"\.gz \(\d+ records with a title\); is it the same category's metadata"):
        download.prepare_amazon(["Tools"], str(tmp_path / "other"), base_url=server.url, min_count=3)  # other ASINs


def test_a_category_without_a_training_example_is_refused_before_a_folder_is_written(server, tmp_path):
    # every user left by the 3-core has 3 items: a valid and a test example each, no training sequence for train.py
    reviews = [{"reviewerID": f"u{u}", "asin": a, "unixReviewTime": t} for u in range(4) for t, a in enumerate("ABC")]
    meta = [{"asin": a, "title": f"Thing {a}"} for a in "ABC"]
    for sub, name, records in (("categoryFilesSmall", "Tools_5.json.gz", reviews),
                               ("metaFiles2", "meta_Tools.json.gz", meta)):
        (server.root / sub).mkdir()
        write_lines(str(server.root / sub / name), records)
    out = tmp_path / "amazon"
    with pytest.raises(UserError, match=r"Tools_5\.json\.gz: after the 3-core no user has 4 items or more, so there is "
                                        "no training example; a larger category or a higher --min-count"):
        download.prepare_amazon(["Tools"], str(out), base_url=server.url, min_count=3)
    assert os.listdir(out) == ["downloads"]  # no Tools folder, finished or temporary


def test_a_title_over_2000_characters_is_counted_as_such(tmp_path, caplog):
    meta = [dict(m) for m in META]
    meta[1]["title"] = "x " * 1000 + "y"       # B: 2,001 characters, past UniSRec's limit: dropped
    meta[2]["title"] = "<div>menu</div>"       # C: page markup: dropped
    meta[3]["title"] = "x " * 999 + "yz"       # D: 2,000 characters: kept
    rev, path = str(tmp_path / "Tools_5.json"), str(tmp_path / "meta_Tools.json")
    write_lines(rev, raw_reviews())
    write_lines(path, meta)
    with caplog.at_level("INFO"):
        d = download.read_amazon_raw(rev, path, min_count=1)
    assert d.item_keys == ["A", "D", "E", "G"] and len(d.items[1]["Title"]) == 2000
    assert "treated as missing: title 1 over 2,000 characters, title 1\n" in caplog.text


# -----------------------------------------------------------------------------
# GLUE -> task folders

MRPC_SOURCE = ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t11\t12\tA \"b\" .\tA b .\r\n"
               "0\t13\t14\tC .\tD .\r\n1\t15\t16\tE .\tE !\r\n")  # the Microsoft file: CRLF, a byte-order mark
UNLABELLED = "index\tsentence1\tsentence2\n0\ta\tb\n"


def zip_files(path, files, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for member, text in files.items():
            z.writestr(member, text)


def serve_glue(root):
    (root / "glue").mkdir()
    zip_files(root / "glue" / "RTE.zip", {"RTE/train.tsv": LAYOUTS["RTE"], "RTE/dev.tsv": LAYOUTS["RTE"],
                                          "RTE/test.tsv": UNLABELLED})
    zip_files(root / "glue" / "MNLI.zip", {
        "MNLI/README.txt": "MultiNLI\n", "MNLI/train.tsv": LAYOUTS["MNLI"], "MNLI/dev_matched.tsv": LAYOUTS["MNLI"],
        "MNLI/dev_mismatched.tsv": LAYOUTS["MNLI"], "MNLI/test_matched.tsv": UNLABELLED,
        "MNLI/test_mismatched.tsv": UNLABELLED, "MNLI/original/multinli_1.0_train.jsonl": "{}\n"})
    zip_files(root / "glue" / "QNLIv2.zip", {"QNLI/train.tsv": LAYOUTS["QNLI"], "QNLI/dev.tsv": LAYOUTS["QNLI"],
                                             "QNLI/test.tsv": UNLABELLED})
    (root / "senteval").mkdir()
    (root / "senteval" / "msr_paraphrase_train.txt").write_bytes(MRPC_SOURCE.encode("utf-8"))
    (root / "mrpc_dev_ids.tsv").write_bytes(b"13\t14\r\n")


def glue_urls(server):
    return dict(base_url=server.url + "/glue/", mrpc_url=server.url + "/senteval/",
                mrpc_dev_ids_url=server.url + "/mrpc_dev_ids.tsv?alt=media&token=x")


def test_glue_archives_become_task_folders(server, tmp_path):
    serve_glue(server.root)
    out = tmp_path / "glue"
    rows = {"RTE": (2, 2), "MNLI": (3, 3), "QNLI": (2, 2), "MRPC": (2, 1)}
    download.prepare_glue(str(out), ["RTE", "MNLI", "QNLI", "MRPC"], expected_rows=rows, **glue_urls(server))
    assert sorted(os.listdir(out)) == ["MNLI", "MRPC", "QNLI", "RTE", "downloads"]
    assert sorted(os.listdir(out / "RTE")) == sorted(os.listdir(out / "QNLI")) == ["dev.tsv", "train.tsv"]
    assert sorted(os.listdir(out / "MNLI")) == ["README.txt", "dev_matched.tsv", "dev_mismatched.tsv", "train.tsv"]
    assert (out / "RTE" / "train.tsv").read_bytes() == LAYOUTS["RTE"].encode("utf-8")  # as in the archive
    # MRPC as GLUE's script builds it: the header as it is, pair (13, 14) in dev, lines ending in '\n'
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    assert (out / "MRPC" / "train.tsv").read_text(encoding="utf-8") == \
        header + "1\t11\t12\tA \"b\" .\tA b .\n1\t15\t16\tE .\tE !\n"
    assert (out / "MRPC" / "dev.tsv").read_text(encoding="utf-8") == header + "0\t13\t14\tC .\tD .\n"

    tasks = data.load_glue(str(out), ["RTE", "MNLI", "QNLI", "MRPC"])
    assert tasks["RTE"]["train"]["y"] == [1, 0] and "test" not in tasks["RTE"]
    assert tasks["MNLI"]["dev"]["y"] == [0, 2, 1] and "test" not in tasks["MNLI"]
    assert tasks["MRPC"]["train"]["text_a"] == ['A "b" .', "E ."] and tasks["MRPC"]["dev"]["text_a"] == ["C ."]
    # a rerun takes every folder for the build it is (MNLI's two dev files too) and fetches nothing; a folder missing
    # a file data.py writes is no build of it, refused before any download
    requests = len(server.seen)
    download.prepare_glue(str(out), ["RTE", "MNLI", "QNLI", "MRPC"], expected_rows=rows, **glue_urls(server))
    os.remove(out / "MNLI" / "dev_mismatched.tsv")
    with pytest.raises(UserError, match=f"^{out}/MNLI/dev_mismatched.tsv: missing, so data.py did not build {out}/MNLI"):
        download.prepare_glue(str(out), ["RTE", "MNLI"], expected_rows=rows, **glue_urls(server))
    assert len(server.seen) == requests


def test_a_control_character_kept_is_named_in_the_task_folder_not_the_build_folder(server, tmp_path, caplog):
    serve_glue(server.root)
    train = LAYOUTS["RTE"].replace("Cats purr.", "Cats\x08purr.")  # as a few lines of the real CoLA and STS-B
    zip_files(server.root / "glue" / "RTE.zip", {"RTE/train.tsv": train, "RTE/dev.tsv": LAYOUTS["RTE"]})
    out = tmp_path / "glue"
    with caplog.at_level("INFO"):
        download.prepare_glue(str(out), ["RTE"], expected_rows={"RTE": (2, 2)}, **glue_urls(server))
    assert f"{out / 'RTE' / 'train.tsv'}:3:7: a control character (b'\\x08'), kept as it is" in caplog.text
    assert ".tmp" not in caplog.text  # the build folder, gone when the command ends
    glue = tmp_path / "few"  # and so do the 16-shot splits drawn from such a file: its notes name it, not theirs
    few_shot_source(glue, "RTE", b"index\tsentence1\tsentence2\tlabel\n",
                    [f"{i}\tCats\x08purr {i}.\tA cat.\t{y}" for i, y in
                     enumerate(["entailment", "not_entailment"] * 2)])
    caplog.clear()
    with caplog.at_level("INFO"):
        download.make_few_shot(str(glue), str(tmp_path / "shots"), ["RTE"], k=1, seeds=(13,))
    assert f"{glue / 'RTE' / 'train.tsv'}:2:" in caplog.text and ".tmp" not in caplog.text


def damaged_crc(path):
    zip_files(path, {"RTE/train.tsv": LAYOUTS["RTE"], "RTE/dev.tsv": LAYOUTS["RTE"]}, zipfile.ZIP_STORED)
    body = path.read_bytes()
    at = body.index(b"Cats purr")  # stored, so the text is in the file: change one letter
    path.write_bytes(body[:at] + b"R" + body[at + 1:])


def header_field(path, local_at, central_at, change):
    """Each member's local and central zip header, one 2-byte field changed: what zipfile cannot unpack."""
    body = bytearray(path.read_bytes())
    for signature, at in ((b"PK\x03\x04", local_at), (b"PK\x01\x02", central_at)):
        for start in [m.start() for m in re.finditer(re.escape(signature), bytes(body))]:
            value = change(int.from_bytes(body[start + at:start + at + 2], "little"))
            body[start + at:start + at + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(body))


@pytest.mark.parametrize("make, rows, message", [
    # Deflate64 (method 9: what Windows writes for large folders) and a password (flag bit 0): zipfile has neither
    (lambda p: header_field(p, 8, 10, lambda method: 9), (2, 2), r"RTE\.zip: not a zip archive as GLUE serves it \("),
    (lambda p: header_field(p, 6, 8, lambda flags: flags | 1), (2, 2), r"RTE\.zip: not a zip archive as GLUE serves "),
    (None, (3, 2), r"RTE\.zip: gives RTE 2 train and 2 dev rows, the official files have 3 and 2"),
    (lambda p: p.write_bytes(p.read_bytes()[:-30]), (2, 2), r"RTE\.zip: not a complete zip archive \("),
    (damaged_crc, (2, 2), r"RTE\.zip: not a complete zip archive \(RTE/train\.tsv fails its CRC check\)"),
    (lambda p: zip_files(p, {"RTE/train.tsv": LAYOUTS["RTE"].replace("\tentailment\n", "\tmaybe\n"),
                             "RTE/dev.tsv": LAYOUTS["RTE"]}), (2, 2), r"RTE\.zip: RTE/train\.tsv:3: label 'maybe'"),
    (lambda p: zip_files(p, {"RTE/train.tsv": LAYOUTS["RTE"], "RTE/..": ""}), (2, 2),  # the error names the
     r"RTE\.zip: RTE/dev\.tsv: no such file;"),                                          # archive, not a build folder
])
def test_a_bad_glue_archive_leaves_no_task_folder(server, tmp_path, make, rows, message):
    serve_glue(server.root)
    if make is not None:
        make(server.root / "glue" / "RTE.zip")
    out = tmp_path / "glue"
    with pytest.raises(UserError, match=message + r".*deleted, so a rerun downloads it again"):
        download.prepare_glue(str(out), ["RTE"], expected_rows={"RTE": rows}, **glue_urls(server))
    assert os.listdir(out) == ["downloads"] and os.listdir(out / "downloads") == []  # not kept, to fail again


def test_an_mrpc_download_that_is_not_utf8_is_deleted(server, tmp_path):
    serve_glue(server.root)
    latin1 = MRPC_SOURCE.encode("utf-8") + b"1\t1\t2\tCaf\xe9\tCafe\n"  # a line saved as Latin-1
    (server.root / "senteval" / "msr_paraphrase_train.txt").write_bytes(latin1)
    out = tmp_path / "glue"
    with pytest.raises(UserError, match=r"msr_paraphrase_train\.txt: not UTF-8 text \(invalid continuation byte: "
                                        r"byte b'\\xe9'\); both downloads deleted, so a rerun downloads them again"):
        download.prepare_glue(str(out), ["MRPC"], expected_rows=None, **glue_urls(server))
    assert os.listdir(out) == ["downloads"] and os.listdir(out / "downloads") == []


def test_an_archive_that_unpacks_too_large_is_refused_before_a_byte_is_written(tmp_path):
    zip_files(tmp_path / "RTE.zip", {"RTE/train.tsv": LAYOUTS["RTE"], "RTE/README.txt": "x" * 5000})
    (tmp_path / "RTE").mkdir()
    with pytest.raises(UserError, match=r"RTE\.zip: RTE/README\.txt unpacks to 5,000 bytes, more than any GLUE file"):
        download.unpack_glue_archive(str(tmp_path / "RTE.zip"), str(tmp_path / "RTE"), max_bytes=4096)
    assert os.listdir(tmp_path / "RTE") == []


# -----------------------------------------------------------------------------
# LM-BFF's few-shot splits


def few_shot_source(root, name, header, rows, newline=b"\n"):
    """Write root/<name>/train.tsv from a header (bytes, or None) and data rows (str); return the data lines."""
    lines = [row.encode("utf-8") + newline for row in rows]
    (root / name).mkdir(parents=True)
    (root / name / "train.tsv").write_bytes((header or b"") + b"".join(lines))
    return lines


def expected_few_shot(header, lines, labels, seed, k, before=()):
    """LM-BFF's draw, computed apart: a permutation of the line numbers, then the first k (train) and the next
    k (dev) lines of each label, labels in order of first appearance in the permuted order. `before`: the
    seeds whose permutations were applied first (LM-BFF shuffles a file without a header in place)."""
    order = np.arange(len(lines))
    for s in tuple(before) + (seed,):
        order = order[np.random.RandomState(s).permutation(len(lines))]
    by_label = {}
    for i in order:
        by_label.setdefault(labels[i], []).append(lines[i])
    train = (header or b"") + b"".join(line for group in by_label.values() for line in group[:k])
    dev = (header or b"") + b"".join(line for group in by_label.values() for line in group[k:2 * k])
    return train, dev


def test_few_shot_splits_follow_lm_bff(tmp_path):
    rng = np.random.default_rng(1)
    glue, out = tmp_path / "glue", tmp_path / "glue-16shot"
    mrpc_header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n".encode("utf-8")
    mrpc_labels = [int(y) for y in rng.integers(0, 2, 80)]
    mrpc = few_shot_source(glue, "MRPC", mrpc_header, [f"{y}\t{i}\t{i + 1000}\tSay \"{i}\" .\tIt is {i} ."
                                                       for i, y in enumerate(mrpc_labels)])
    stsb_header = b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\r\n"
    scores = [round(float(s), 3) for s in rng.uniform(0, 5, 79)] + [2.5]  # 2.5 goes to the upper bin
    stsb = few_shot_source(glue, "STS-B", stsb_header, [f"{i}\tnews\tf\t2012\t{i}\tnone\tnone\tA {i}.\tB {i}.\t{s}"
                                                        for i, s in enumerate(scores)], newline=b"\r\n")
    cola_labels = [int(y) for y in rng.integers(0, 2, 80)]
    cola = few_shot_source(glue, "CoLA", None, [f"gj04\t{y}\t{'' if y else '*'}\tSentence {i} ."
                                                for i, y in enumerate(cola_labels)])

    download.make_few_shot(str(glue), str(out), ["MRPC", "STS-B", "CoLA"], k=16, seeds=(21, 13))
    for name, header, lines, labels in (("MRPC", mrpc_header, mrpc, mrpc_labels),
                                        ("STS-B", stsb_header, stsb, [int(s >= 2.5) for s in scores]),
                                        ("CoLA", None, cola, cola_labels)):
        folders = data.few_shot_folders(str(out), name)
        assert folders == [str(out / name / "16-13"), str(out / name / "16-21")]
        for folder, seed in zip(folders, (13, 21)):
            # CoLA has no header: LM-BFF's order of seeds (100, 13, 21, ...) chains its shuffles, asked for or not
            before = {13: (100,), 21: (100, 13)}[seed] if name == "CoLA" else ()
            train, dev = expected_few_shot(header, lines, labels, seed, 16, before)
            with open(os.path.join(folder, "train.tsv"), "rb") as f:
                assert f.read() == train  # byte for byte, the header (and MRPC's byte-order mark) included
            with open(os.path.join(folder, "dev.tsv"), "rb") as f:
                assert f.read() == dev
            task = data.glue_task(name, folder)
            for split in ("train", "dev"):
                bins = [int(y >= 2.5) for y in task[split]["y"]] if name == "STS-B" else task[split]["y"]
                assert Counter(bins) == {0: 16, 1: 16}
    assert data.few_shot_folders(str(out), "RTE") == []


def test_a_few_shot_split_is_the_same_whichever_seeds_are_asked_for(tmp_path):
    """16-<seed> holds the same bytes made alone, among LM-BFF's seeds or in another order, with a header (RTE)
    or without (CoLA, whose split of one of LM-BFF's seeds replays the shuffles of the seeds before it in
    LM-BFF's order, asked for or not; any other seed shuffles the file's order, as with a header)."""
    glue = tmp_path / "glue"
    rte_header = b"index\tsentence1\tsentence2\tlabel\n"
    rte_labels = ["entailment" if i % 3 else "not_entailment" for i in range(60)]
    rte = few_shot_source(glue, "RTE", rte_header, [f"{i}\tA {i}.\tB {i}.\t{y}" for i, y in enumerate(rte_labels)])
    cola_labels = [i % 2 for i in range(60)]
    cola = few_shot_source(glue, "CoLA", None, [f"gj04\t{y}\t{'' if y else '*'}\tSentence {i} ."
                                                for i, y in enumerate(cola_labels)])
    runs = {"default": None, "13": "13", "42": "42", "7": "7", "87,13": "87,13", "87,42,21,13,100": "87,42,21,13,100",
            "7,42,13": "7,42,13"}
    for run, seeds in runs.items():
        download.main(["few-shot", "--glue", str(glue), "--out", str(tmp_path / run), "--tasks", "CoLA,RTE",
                       "--k", "4"] + (["--seeds", seeds] if seeds else []))

    def split(run, name, seed):
        folder = tmp_path / run / name / f"4-{seed}"
        return (folder / "train.tsv").read_bytes(), (folder / "dev.tsv").read_bytes()

    for name, header, lines, labels in (("CoLA", None, cola, cola_labels), ("RTE", rte_header, rte, rte_labels)):
        for seed in (13, 42, 7):
            made = [run for run in runs if str(seed) in run.split(",") or (run == "default" and seed != 7)]
            before = download.LM_BFF_SEEDS[:download.LM_BFF_SEEDS.index(seed)] if name == "CoLA" and seed != 7 else ()
            expected = expected_few_shot(header, lines, labels, seed, 4, before)
            for run in made:
                assert split(run, name, seed) == expected, (name, seed, run)
        # the default seeds are LM-BFF's run of its script: CoLA's shuffles chained 100, 13, 21, 42, 87
        for i, seed in enumerate(download.LM_BFF_SEEDS):
            before = download.LM_BFF_SEEDS[:i] if name == "CoLA" else ()
            assert split("default", name, seed) == expected_few_shot(header, lines, labels, seed, 4, before)


def test_few_shot_of_a_gzipped_train_file_is_that_of_the_file_unpacked(tmp_path):
    """train.py reads a gzip-compressed train.tsv whatever its name; few-shot draws the same lines from it as from
    the plain file (which it copies byte for byte)."""
    header = b"index\tsentence1\tsentence2\tlabel\n"
    labels = ["entailment" if i % 3 else "not_entailment" for i in range(40)]
    lines = few_shot_source(tmp_path / "glue", "RTE", header, [f"{i}\tA {i}.\tB.\t{y}" for i, y in enumerate(labels)])
    path = tmp_path / "glue" / "RTE" / "train.tsv"
    path.write_bytes(gzip.compress(path.read_bytes()))
    download.make_few_shot(str(tmp_path / "glue"), str(tmp_path / "out"), ["RTE"], k=4, seeds=(13,))
    split = tmp_path / "out" / "RTE" / "4-13"
    assert ((split / "train.tsv").read_bytes(), (split / "dev.tsv").read_bytes()) == \
        expected_few_shot(header, lines, labels, 13, 4)


def test_few_shot_checks_every_folder_it_builds_before_it_writes_one(tmp_path):
    """A task's folder that is a file, or a seed folder that data.py did not build (a file missing, as a user's own
    folder would be): refused, naming it, before any split is written; a folder built before is left as it was."""
    header = b"index\tsentence1\tsentence2\tlabel\n"
    for name in ("CoLA", "RTE"):
        few_shot_source(tmp_path / "glue", name, None if name == "CoLA" else header,
                        [f"gj04\t{i % 2}\t\tSentence {i} ." if name == "CoLA" else
                         f"{i}\tA {i}.\tB.\t{'entailment' if i % 2 else 'not_entailment'}" for i in range(40)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "RTE").write_text("a file")
    with pytest.raises(UserError, match=f"^{out}/RTE: is a file; data.py builds a folder there"):
        download.make_few_shot(str(tmp_path / "glue"), str(out), ["CoLA", "RTE"], k=4, seeds=(13,))
    assert os.listdir(out) == ["RTE"]  # CoLA, asked for first, was not written
    (out / "RTE").unlink()
    (out / "RTE" / "4-13").mkdir(parents=True)
    (out / "RTE" / "4-13" / "train.tsv").write_text("a user's own file")
    with pytest.raises(UserError, match=f"^{out}/RTE/4-13/dev.tsv: missing, so data.py did not build {out}/RTE/4-13"):
        download.make_few_shot(str(tmp_path / "glue"), str(out), ["CoLA", "RTE"], k=4, seeds=(13,))
    assert sorted(os.listdir(out)) == ["RTE"] and os.listdir(out / "RTE" / "4-13") == ["train.tsv"]
    dev = out / "RTE" / "4-13" / "dev.tsv"
    for make, what in ((lambda: dev.write_bytes(b""), "empty"), (lambda: dev.unlink() or dev.mkdir(), "a folder")):
        make()  # no build of data.py either
        with pytest.raises(UserError, match=f"^{dev}: {what}, so data.py did not build"):
            download.make_few_shot(str(tmp_path / "glue"), str(out), ["CoLA", "RTE"], k=4, seeds=(13,))
    # a GLUE train.tsv that is there but no file is said to be what it is (not "fetch GLUE first")
    os.remove(tmp_path / "glue" / "CoLA" / "train.tsv")
    (tmp_path / "glue" / "CoLA" / "train.tsv").mkdir()
    with pytest.raises(UserError, match="CoLA/train.tsv: is a folder, not a file$"):
        download.make_few_shot(str(tmp_path / "glue"), str(tmp_path / "out2"), ["CoLA"], k=4, seeds=(13,))


def test_few_shot_onto_a_full_disk_names_the_file_and_leaves_no_folder(tmp_path, monkeypatch):
    few_shot_source(tmp_path / "glue", "RTE", b"index\tsentence1\tsentence2\tlabel\n",
                    [f"{i}\tA {i}.\tB.\t{'entailment' if i % 2 else 'not_entailment'}" for i in range(20)])
    real_open = open

    def full(path, mode="r", *args, **kwargs):  # a disk with no room left: writing fails, as ENOSPC does
        if "w" in mode and str(path).endswith("train.tsv"):
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(UserError, match=r"out/RTE/4-13/train.tsv: cannot be written \(No space left on device\)"):
        download.make_few_shot(str(tmp_path / "glue"), str(tmp_path / "out"), ["RTE"], k=4, seeds=(13,))
    assert not (tmp_path / "out").exists()  # nor the folders made for it


def test_few_shot_needs_two_k_lines_per_label(tmp_path):
    few_shot_source(tmp_path / "glue", "RTE", b"index\tsentence1\tsentence2\tlabel\n",
                    [f"{i}\tA.\tB.\t{'entailment' if i % 4 else 'not_entailment'}" for i in range(40)])
    with pytest.raises(UserError, match=r"label 'not_entailment' has 10 lines, fewer than 2k = 16"):
        download.make_few_shot(str(tmp_path / "glue"), str(tmp_path / "out"), ["RTE"], k=8, seeds=(13,))
    assert not os.path.exists(tmp_path / "out" / "RTE" / "8-13")
    # a label with no line at all (every pair entails; STS-B: every score at least 2.5) is as short of 2k
    for name, header, rows, label in (
            ("RTE", b"index\tsentence1\tsentence2\tlabel\n", [f"{i}\tA {i}.\tB.\tentailment" for i in range(40)],
             "'not_entailment'"),
            ("STS-B", b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n",
             [f"{i}\tg\tf\t2012\t{i}\tnone\tnone\tA {i}.\tB.\t4.0" for i in range(40)], "0")):
        few_shot_source(tmp_path / "one", name, header, rows)
        with pytest.raises(UserError, match=f"{name}/train.tsv: label {label} has 0 lines, fewer than 2k = 16"):
            download.make_few_shot(str(tmp_path / "one"), str(tmp_path / "out"), [name], k=8, seeds=(13,))
        assert not os.path.exists(tmp_path / "out" / name)


def test_few_shot_refuses_a_dev_split_that_holds_only_examples_of_its_train_split(tmp_path):
    """A train.tsv whose lines repeat (here each of 2 pairs per label, 20 times) gives a dev.tsv of train's examples,
    which train.py refuses for validation: data.py few-shot refuses to write it."""
    few_shot_source(tmp_path / "glue", "RTE", b"index\tsentence1\tsentence2\tlabel\n",
                    [f"{i}\tA {i % 4}.\tB.\t{'entailment' if i % 2 else 'not_entailment'}" for i in range(80)])
    with pytest.raises(UserError, match=r"RTE/train.tsv: repeats its lines so often that every example of .*8-13's "
                                        r"dev.tsv is also in its train.tsv"):
        download.make_few_shot(str(tmp_path / "glue"), str(tmp_path / "out"), ["RTE"], k=8, seeds=(13,))
    assert not os.path.exists(tmp_path / "out" / "RTE" / "8-13")


@pytest.mark.parametrize("blank", ["", " \t", "\x0c", "\u00a0", "\u2028", "\x1c"])
def test_few_shot_takes_the_lines_the_reader_takes(tmp_path, blank):
    """The data lines drawn from are the rows read_glue_split reads, one for one, whatever a blank line holds (a
    byte-order mark before a blank first line included); a line it does not take for blank is its error."""
    rows = [f"{i}\tA {i}.\tB.\t{'entailment' if i % 2 else 'not_entailment'}" for i in range(8)]
    text = "\ufeff\nindex\tsentence1\tsentence2\tlabel\n" + "\n".join(rows[:4] + [blank] + rows[4:]) + "\n"
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_bytes(text.encode("utf-8"))
    try:
        y = data.read_glue_split(str(tmp_path / "RTE" / "train.tsv"), "RTE")["y"]
    except UserError:
        with pytest.raises(UserError):
            download._labelled_lines(str(tmp_path), "RTE")
        return
    _, header, lines, label = download._labelled_lines(str(tmp_path), "RTE")
    assert header == [b"index\tsentence1\tsentence2\tlabel\n"]
    assert lines == [row.encode("utf-8") + b"\n" for row in rows] and len(y) == len(rows)
    assert [label[line] for line in lines] == [row.split("\t")[3] for row in rows]


# -----------------------------------------------------------------------------
# the command line


def run_main(capsys, argv):
    with pytest.raises(SystemExit) as e:
        download.main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_help(capsys):
    code, out, _ = run_main(capsys, ["--help"])
    assert code == 0 and "python data.py amazon Industrial_and_Scientific" in out
    for command in ("amazon", "glue", "few-shot"):
        code, out, _ = run_main(capsys, [command, "--help"])
        assert code == 0 and "example" in out


@pytest.mark.skipif(engine.fcntl is None, reason="no file locks on this system (Windows): data.py runs unlocked")
def test_a_second_data_py_into_the_same_out_folder_is_refused_while_the_first_writes(tmp_path):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "amazon"
    with download.held(str(out), "--out"):  # the first run, in the middle of its work
        (out / "Tools").mkdir()
        second = subprocess.run([sys.executable, "data.py", "amazon", "Tools", "--out", str(out), "--url",
                                 (tmp_path / "site").as_uri()], cwd=here, capture_output=True, text=True)
        assert (second.returncode, second.stderr) == (2, f"error: --out {out}: a train.py or data.py writes there "
                                                         "now; wait till it ends\n")
        assert os.listdir(out) == ["Tools"]  # nothing of the second run's
    with download.held(str(tmp_path / "new" / "folder"), "--out"):  # made for the run, and removed if left empty
        assert (tmp_path / "new" / "folder").is_dir()
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("script", ["data.py", "download.py"])
def test_the_command_is_still_python_data_py(script):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, script, "--help"], cwd=here, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("usage: data.py")
    assert "{amazon,glue,few-shot}" in run.stdout
    for command in ("amazon", "glue", "few-shot"):
        assert f"python data.py {command}" in run.stdout


@pytest.mark.parametrize("argv, message", [
    (["amazon", "No_Such_Category"], "/categoryFilesSmall/No_Such_Category_5.json.gz: HTTP 404 Not Found; "
                                     "is 'No_Such_Category' an Amazon 2018 category"),
    (["amazon", "Video Games"], "'Video Games': not an Amazon 2018 category file name"),
    (["few-shot", "--glue", "nowhere"], "--glue nowhere: no such folder (python data.py glue writes one)"),
])
def test_a_user_error_is_one_line(server, tmp_path, capsys, argv, message):
    code, _, err = run_main(capsys, argv + ["--out", str(tmp_path / "out")] +
                            (["--url", server.url] if argv[0] == "amazon" else []))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_a_path_with_a_newline_is_still_one_line(tmp_path, capsys):
    (tmp_path / "a\nb").write_text("a file where a folder goes")
    code, _, err = run_main(capsys, ["amazon", "Tools", "--out", str(tmp_path / "a\nb")])
    assert code == 2 and err.count("\n") == 1 and "a\\nb" in err, err


@pytest.mark.parametrize("argv, message", [
    (["glue", "--tasks", "CoLA,WNLI"], "unknown GLUE task 'WNLI'"),
    (["few-shot", "--tasks", "RTE,RTE"], "--tasks: RTE is named twice"),
    (["amazon", "Tools", "--min-cou", "3"], "unrecognized arguments: --min-cou"),  # no abbreviations
    (["amazon", "Tools", "--min-count", "2"], "--min-count: must be 3 or more"),  # leave-one-out would drop users
    (["few-shot", "--seeds", "13,x"], "expected comma-separated integers from 0 to 4294967295"),
    (["few-shot", "--seeds", "4294967296"], "--seeds: expected comma-separated integers from 0 to 4294967295"),
    (["amazon", "Tools", "--url", "mirror/amazon"], "--url: expected an http://, https:// or file:// URL"),
    (["amazon", "Tools", "--url", "ftp://mirror/amazon"], "--url: expected an http://, https:// or file:// URL"),
    (["amazon", "Tools", "--url", "http://mirror/amazon?x=1"], "has a query or fragment (?, #); give the folder's URL"),
    (["amazon", "Tools", "--url", "http://127.0.0.1:abc/amazon"], "--url: 'http://127.0.0.1:abc/amazon': Port could"),
    (["amazon", "Tools", "--url", "file:///mirror/amazon#top"], "has a query or fragment (?, #); give the folder's URL"),
    (["few-shot", "--k", "8", "--k", "16"], "--k is given twice"),  # not the last one, silently
    (["amazon", "Tools", "--min-count", "5", "--min-count", "3"], "--min-count is given twice"),
])
def test_bad_flags_fail_at_once(capsys, argv, message):
    code, _, err = run_main(capsys, argv)
    assert code == 2 and message in err


def test_few_shot_goes_next_to_the_glue_folder_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    few_shot_source(tmp_path / "data" / "glue", "RTE", b"index\tsentence1\tsentence2\tlabel\n",
                    [f"{i}\tA {i}.\tB.\t{'entailment' if i % 2 else 'not_entailment'}" for i in range(8)])
    download.main(["few-shot", "--glue", "data/glue", "--tasks", "RTE", "--k", "2", "--seeds", "5"])
    assert os.listdir(tmp_path / "data" / "glue-16shot" / "RTE") == ["2-5"]
    assert "data/glue-16shot/RTE/2-5: 2 train and 2 dev examples for each of 2 labels" in capsys.readouterr().out
    # an absolute --glue: the folder is named as absolute too (not relative to wherever the command ran)
    monkeypatch.chdir(tmp_path / "data" / "glue" / "RTE")
    download.main(["few-shot", "--glue", str(tmp_path / "data" / "glue"), "--tasks", "RTE", "--k", "2", "--seeds", "7"])
    assert f"{tmp_path}/data/glue-16shot/RTE/2-7: 2 train" in capsys.readouterr().out


def test_an_interrupt_says_the_downloads_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(download, "prepare_glue", interrupted)
    code, _, err = run_main(capsys, ["glue"])
    assert code == 130 and ".part" in err and "resumes" in err


def test_a_build_folder_that_a_killed_run_left_is_cleared(tmp_path):
    os.makedirs(tmp_path / ".Tools.tmp" / "Tools")
    (tmp_path / ".Tools.tmp" / "Tools" / "half.inter").write_text("a killed run's\n")
    with download.building(str(tmp_path / "Tools")) as tmp:
        with open(os.path.join(tmp, "Tools.item"), "w") as f:
            f.write("item_id:token\n")
    assert os.listdir(tmp_path) == ["Tools"] and os.listdir(tmp_path / "Tools") == ["Tools.item"]
