"""The shell's completer, through get_completions (no terminal)."""

from unittest.mock import Mock

from prompt_toolkit.document import Document

from kpctl.shell.completer import KpctlCompleter

IDS = {3: "active a ⇄ b", 12: "active c ⇄ d", 120: "closing e ⇄ f"}


def complete(text, ids=IDS):
    c = KpctlCompleter(ids=lambda: ids)
    return [(x.text, x.start_position)
            for x in c.get_completions(Document(text, len(text)), Mock())]


def texts(text, ids=IDS):
    return [t for t, _ in complete(text, ids)]


def test_command_names():
    assert texts("") == ["list", "show", "create", "destroy", "listen", "unlisten", "attach",
                         "http-rules", "detach", "stats",
                         "monitor", "top", "serve", "jobs", "stop", "help", "version", "exit",
                         "quit"]
    assert complete("s") == [("show", -1), ("stats", -1), ("serve", -1), ("stop", -1)]
    assert texts("de") == ["destroy", "detach"]
    assert texts("x") == []


def test_live_ids_after_id_commands():
    assert complete("show ") == [("3", 0), ("12", 0), ("120", 0)]
    assert complete("show 1") == [("12", -1), ("120", -1)]
    assert texts("sh 12") == ["12", "120"]  # a prefix of the command works too


def test_ids_are_live():
    ids = {}
    c = KpctlCompleter(ids=lambda: ids)
    doc = Document("show ", 5)
    assert list(c.get_completions(doc, Mock())) == []
    ids[7] = "new"
    assert [x.text for x in c.get_completions(doc, Mock())] == ["7"]


def test_only_one_id_for_show():
    # After the id only show's own option is left to offer.
    assert texts("show 3 ") == ["--listener"]


def test_destroy_takes_many_ids_and_skips_typed_ones():
    assert texts("destroy 3 ") == ["12", "120", "--all"]


def test_options():
    assert texts("stats -") == ["-w", "--interval", "-c", "--count"]
    assert texts("stats --i") == ["--interval"]
    assert texts("stats -w 1 -") == ["-c", "--count"]
    assert texts("create --fd 3 -") == ["--listen", "--connect", "--timeout", "--fd"]
    assert texts("create --listen :1 -") == ["--connect", "--timeout", "--fd"]
    assert texts("create --l") == ["--listen"]
    assert texts("stop 1 --") == ["--drain", "--kill", "--leave"]
    assert texts("destroy --") == ["--all"]


def test_option_values_and_choices():
    assert texts("stats -w ") == []  # a number: nothing to offer
    assert texts("attach 3 ") == ["parser", "verdict"]
    assert texts("attach 3 v") == ["verdict"]
    assert texts("detach 3 parser --dir ") == ["a-to-b", "b-to-a", "both"]
    assert texts("detach 3 parser --dir b") == ["b-to-a", "both"]


def test_help_completes_commands():
    assert texts("help mo") == ["monitor"]
    assert texts("help ")[:3] == ["list", "show", "create"]


def test_ambiguous_or_unknown_command_offers_nothing():
    assert texts("s 1") == []
    assert texts("bogus ") == []


def test_id_meta_is_shown():
    c = KpctlCompleter(ids=lambda: {3: "active 10.0.0.1:1 ⇄ 10.0.0.2:2"})
    comp = list(c.get_completions(Document("show ", 5), Mock()))
    assert comp[0].display_meta_text == "active 10.0.0.1:1 ⇄ 10.0.0.2:2"


def test_failing_id_source_is_quiet():
    def boom():
        raise OSError("no module")
    c = KpctlCompleter(ids=boom)
    assert list(c.get_completions(Document("show ", 5), Mock())) == []


def test_file_completion_for_attach(tmp_path):
    (tmp_path / "parser.bpf.o").write_text("")
    text = f"attach 3 parser {tmp_path}/pa"
    assert texts(text) == ["rser.bpf.o"]


def test_open_quote_does_not_crash():
    assert isinstance(texts('show "1'), list)


def test_job_numbers():
    c = KpctlCompleter(ids=lambda: IDS, jobs=lambda: {1: "running :9000 → x", 2: "stopping"})
    doc = Document("stop ", 5)
    assert [(x.text, x.display_meta_text) for x in c.get_completions(doc, Mock())][:2] == [
        ("1", "running :9000 → x"), ("2", "stopping")]
