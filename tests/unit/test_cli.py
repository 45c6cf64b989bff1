"""``embed-file``: reading lines, JSONL and CSV, bad lines by number, windows, and resume.

The queue is replaced by a fake window embedder, so no Redis or worker is needed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from producers import cli
from producers.cli import Item, embed_items, guess_format, load_done, read_items, record_key
from tests.unit.stream_fakes import FakeStream


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_format_is_guessed_from_the_extension():
    assert guess_format(Path("a.jsonl")) == "jsonl"
    assert guess_format(Path("a.NDJSON")) == "jsonl"
    assert guess_format(Path("a.csv")) == "csv"
    assert guess_format(Path("a.txt")) == "lines"
    assert guess_format(Path("README")) == "lines"


def test_plain_lines_get_their_line_number_as_id_and_empty_lines_are_bad(tmp_path):
    path = _write(tmp_path / "in.txt", "first\n\n   \nfourth\r\n")
    items = list(read_items(path, "lines", max_chars=100))
    assert [(i.line, i.id, i.text) for i in items if i.error is None] == [
        (1, 1, "first"),
        (4, 4, "fourth"),
    ]
    assert [(i.line, i.error) for i in items if i.error] == [
        (2, "line 2: text is empty"),
        (3, "line 3: text is whitespace-only"),
    ]


def test_a_text_over_the_limit_is_a_bad_line_naming_its_number(tmp_path):
    path = _write(tmp_path / "in.txt", "ok\n" + "x" * 11 + "\n")
    bad = [i for i in read_items(path, "lines", max_chars=10) if i.error]
    assert [(i.line, i.error) for i in bad] == [
        (2, "line 2: text has 11 characters; the limit is 10")
    ]


def test_undecodable_bytes_are_a_bad_line_not_a_crash(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"good\nbad \xff byte\nalso good\n")
    items = list(read_items(path, "lines", max_chars=100))
    assert [i.text for i in items] == ["good", None, "also good"]
    assert items[1].error is not None and "UTF-8" in items[1].error


def test_jsonl_reads_the_chosen_field_and_id_and_reports_each_bad_line(tmp_path):
    path = _write(
        tmp_path / "in.jsonl",
        "\n".join(
            [
                '{"doc": "a1", "body": "alpha"}',
                "{not json",
                '{"doc": "a3", "text": "no body"}',
                '["a", "list"]',
                '{"doc": "a5", "body": 7}',
                '{"body": "no id"}',
                '{"doc": "a7", "body": ""}',
            ]
        )
        + "\n",
    )
    items = list(read_items(path, "jsonl", field="body", id_field="doc", max_chars=100))
    assert [(i.line, i.id, i.text) for i in items if i.error is None] == [
        (1, "a1", "alpha"),
        (6, 6, "no id"),
    ]
    errors = {i.line: (i.id, i.error) for i in items if i.error}
    assert errors[2][0] == 2 and errors[2][1].startswith("line 2: not valid JSON")
    assert errors[3] == ("a3", "line 3: no field 'body'")
    assert errors[4] == (4, "line 4: not a JSON object")
    assert errors[5] == ("a5", "line 5: text must be str, got int")
    assert errors[7] == ("a7", "line 7: text is empty")


def test_csv_reads_the_chosen_column_with_line_numbers_across_quoted_newlines(tmp_path):
    path = _write(
        tmp_path / "in.csv",
        'id,question,lang\nq1,"What is, a comma?",en\nq2,"two\nlines",en\n\nq3,,en\nq4\n',
    )
    items = list(read_items(path, "csv", field="question", max_chars=100))
    assert [(i.line, i.id, i.text) for i in items if i.error is None] == [
        (2, "q1", "What is, a comma?"),
        (3, "q2", "two\nlines"),
    ]
    assert [(i.line, i.id, i.error) for i in items if i.error] == [
        (6, "q3", "line 6: text is empty"),
        (7, "q4", "line 7: no value for column 'question'"),
    ]


def test_a_csv_without_the_column_is_a_usage_error(tmp_path):
    path = _write(tmp_path / "in.csv", "id,body\n1,hello\n")
    with pytest.raises(cli.UsageError, match="no column 'text'"):
        list(read_items(path, "csv", max_chars=100))


def test_count_records_matches_what_is_read(tmp_path):
    csv_path = _write(tmp_path / "in.csv", 'text\n"a\nb"\nc\n\n')
    lines_path = _write(tmp_path / "in.txt", "a\n\nb\n")
    assert cli.count_records(csv_path, "csv") == len(list(read_items(csv_path, "csv", max_chars=9)))
    assert cli.count_records(lines_path, "lines") == 3


def test_each_result_is_written_as_it_finishes_not_when_its_window_ends():
    items = [Item(n, f"id-{n}", text=f"text {n}") for n in range(1, 5)]
    out = io.StringIO()
    embedder = FakeStream(reverse=True, out=out)
    summary = embed_items(items, out, embedder, skip=set(), window=4)
    assert embedder.seen_mid_window == [1, 2, 3, 4]  # on disk before the window returned
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["line"] for r in records] == [4, 3, 2, 1]  # finishing order, not input order
    assert {r["id"]: r["embedding"] for r in records} == {f"id-{n}": [6.0] for n in range(1, 5)}
    assert summary.ok == 4


def test_every_record_is_written_once_per_window_with_bad_lines_first():
    items = [Item(n, n, text=f"text {n}") for n in range(1, 8)]
    items[2] = Item(3, 3, error="line 3: text is empty")
    items[4] = Item(5, 5, text="please FAIL")
    embedder = FakeStream()
    out = io.StringIO()
    failed: list[tuple[int, str]] = []
    summary = embed_items(
        items,
        out,
        embedder,
        skip=set(),
        window=3,
        on_failed=lambda i, e: failed.append((i.line, e)),
    )
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["line"] for r in records] == [3, 1, 2, 4, 5, 6, 7]  # line 3 has no text: at once
    by_line = {r["line"]: r for r in records}
    assert by_line[1] == {"id": 1, "line": 1, "embedding": [6.0]}
    assert by_line[3] == {"id": 3, "line": 3, "error": "line 3: text is empty"}
    assert by_line[5] == {"id": 5, "line": 5, "error": "line 5: EmbeddingAPIError: rejected"}
    # A window counts texts sent, not lines read; line 3 never reaches the queue.
    assert embedder.texts == ["text 1", "text 2", "text 4", "please FAIL", "text 6", "text 7"]
    assert embedder.most_in_flight == 3
    assert failed == [(3, "line 3: text is empty"), (5, "line 5: EmbeddingAPIError: rejected")]
    assert (summary.texts, summary.ok, summary.failed, summary.skipped) == (7, 5, 2, 0)


def test_ids_to_skip_are_counted_and_never_embedded():
    items = [Item(1, "a", text="one"), Item(2, "b", text="two"), Item(3, 3, text="three")]
    embedder = FakeStream()
    out = io.StringIO()
    summary = embed_items(items, out, embedder, skip={record_key("a"), record_key(3)})
    assert embedder.texts == ["two"]
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == ["b"]
    assert summary.skipped == 2


def test_record_keys_keep_a_number_and_its_string_apart():
    assert record_key(7) != record_key("7")
    assert record_key("7") == record_key("7")


def test_load_done_splits_embedded_ids_from_failed_ones_and_drops_a_torn_last_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text(
        '{"id": "a", "line": 1, "embedding": [1.0]}\n'
        '{"id": "b", "line": 2, "error": "boom"}\n'
        '{"id": "c", "line": 3, "error": "boom"}\n'
        '{"id": "c", "line": 3, "embedding": [2.0]}\n'
        '{"id": "d", "line": 4, "embe'
    )
    embedded, failed = load_done(out)
    assert embedded == {record_key("a"), record_key("c")}
    assert failed == {record_key("b")}
    assert out.read_text().endswith('"embedding": [2.0]}\n')


def test_load_done_of_a_missing_file_is_empty(tmp_path):
    assert load_done(tmp_path / "absent.jsonl") == (set(), set())


def test_a_rerun_resumes_and_embeds_only_what_is_not_in_the_output(tmp_path, capsys):
    source = _write(tmp_path / "in.jsonl", '{"id": 1, "text": "a"}\n{"id": 2, "text": "bb"}\n')
    output = tmp_path / "out.jsonl"
    first = FakeStream()
    assert cli.main([str(source), "-o", str(output), "--no-progress"], stream=first) == 0
    assert first.texts == ["a", "bb"]

    with source.open("a") as f:
        f.write('{"id": 3, "text": "ccc"}\nnot json\n')
    second = FakeStream()
    code = cli.main([str(source), "-o", str(output), "--no-progress"], stream=second)
    assert code == 1  # the bad line
    assert second.texts == ["ccc"]
    assert sorted((r["id"], "embedding" in r) for r in _records(output)) == [
        (1, True),
        (2, True),
        (3, True),
        (4, False),
    ]
    err = capsys.readouterr().err
    assert "line 4: not valid JSON" in err
    assert "skipped" in err

    third = FakeStream()
    assert cli.main([str(source), "-o", str(output), "--no-progress"], stream=third) == 0
    assert third.texts == []
    assert len(_records(output)) == 4


def test_retry_failed_re_embeds_ids_whose_only_record_is_an_error(tmp_path):
    source = _write(tmp_path / "in.txt", "fine\nFAIL once\n")
    output = tmp_path / "out.jsonl"
    assert cli.main([str(source), "-o", str(output), "--no-progress"], stream=FakeStream()) == 1
    again = FakeStream()
    cli.main([str(source), "-o", str(output), "--no-progress"], stream=again)
    assert again.texts == []
    retried = FakeStream()
    cli.main([str(source), "-o", str(output), "--no-progress", "--retry-failed"], stream=retried)
    assert retried.texts == ["FAIL once"]


def test_retry_failed_replaces_a_lines_error_record_instead_of_adding_another(tmp_path):
    source = _write(tmp_path / "in.txt", "fine\nFAIL\nalso fine\n")
    output = tmp_path / "out.jsonl"
    assert cli.main([str(source), "-o", str(output), "--no-progress"], stream=FakeStream()) == 1
    _write(source, "fine\nnow it works\nalso fine\n")  # the same ids, line 2 fixed
    argv = [str(source), "-o", str(output), "--no-progress", "--retry-failed"]
    assert cli.main(argv, stream=FakeStream()) == 0
    records = _records(output)
    assert sorted(r["id"] for r in records) == [1, 2, 3]  # one record per id
    assert {r["id"]: r.get("embedding") for r in records}[2] == [float(len("now it works"))]


def test_help_shows_the_defaults_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 2000)" in text and "(default: 600.0)" in text and "(default: 30.0)" in text
    assert "0 every record embedded" in text
    assert "1 some records failed" in text
    assert "130 interrupted (Ctrl-C)" in text
    assert "2 usage, configuration or broker error" in text
    assert "(default: None)" not in text


def test_the_output_defaults_to_a_file_beside_the_input(tmp_path):
    source = _write(tmp_path / "corpus.txt", "hello\n")
    assert cli.main([str(source), "--no-progress"], stream=FakeStream()) == 0
    assert _records(tmp_path / "corpus.txt.embeddings.jsonl") == [
        {"id": 1, "line": 1, "embedding": [5.0]}
    ]


def test_usage_errors_exit_with_status_two(tmp_path, capsys):
    source = _write(tmp_path / "in.csv", "body\nhello\n")
    fake = FakeStream()
    assert cli.main([str(source), "--no-progress"], stream=fake) == 2
    assert "no column 'text' in the CSV header ['body']" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "missing.txt")], stream=fake) == 2
    assert cli.main([str(source), "--window", "0"], stream=fake) == 2
    assert fake.texts == []
    assert cli.main([str(source), "--column", "body", "--no-progress"], stream=fake) == 0
    assert fake.texts == ["hello"]


def test_a_records_task_id_is_the_same_every_run_and_changes_with_its_line_text_or_model(
    tmp_path,
):
    source = _write(tmp_path / "in.txt", "a\n")
    same = cli.task_id_for(source, 1, "a", None)
    assert cli.task_id_for(tmp_path / "." / "in.txt", 1, "a", None) == same
    others = {
        cli.task_id_for(source, 2, "a", None),
        cli.task_id_for(source, 1, "b", None),
        cli.task_id_for(source, 1, "a", "other-model"),
        cli.task_id_for(_write(tmp_path / "other.txt", "a\n"), 1, "a", None),
    }
    assert same not in others and len(others) == 4


def test_pending_ids_survive_a_restart_and_the_file_goes_once_all_are_collected(tmp_path):
    path = tmp_path / "out.jsonl.pending"
    pending = cli.PendingIds(path)
    pending.add(["a", "b", "c"])
    assert set(cli.PendingIds(path).ids) == {"a", "b", "c"}
    pending.discard(["a"])
    again = cli.PendingIds(path)
    assert "a" not in again and "b" in again and len(again) == 2
    again.discard(["b", "c"])
    assert not path.exists()
