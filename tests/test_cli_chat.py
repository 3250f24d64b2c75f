"""`lantern chat`, end to end: in a pseudo-terminal (streaming, Ctrl-C, /save, /quit, Ctrl-D),
with piped input (turn-2 prefill = only the new message, context overflow drops old turns
and keeps the system prompt), and its commands in-process."""
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pexpect
import pytest

from lanternlm.formats.gguf import read_gguf
from lanternlm.formats.tokenizer import load_tokenizer
from lanternlm.runtime.chat_cli import COMMANDS, ChatREPL
from lanternlm.runtime.chat_session import ChatSession
from lanternlm.runtime.model import Model

GREEDY = ["--temp", "0", "-t", "1"]      # deterministic; one thread is fastest on a shared machine
STATS = re.compile(r"\[(\d+) tokens, [^|\]]*\| prefill (\d+) tokens[^|\]]*\| context (\d+)/(\d+)")
TIMEOUT = 300


def chat_argv(model_path, *flags) -> list[str]:
    return ["-m", "lanternlm.cli", "chat", str(model_path), *GREEDY, *map(str, flags)]


def run_piped(model_path, lines, *flags, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *chat_argv(model_path, *flags)], cwd=cwd, timeout=TIMEOUT,
                          input="".join(line + "\n" for line in lines), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return load_tokenizer(read_gguf(smollm2_path).kv)


def chatml(role: str, content: str) -> str:
    """SmolLM2's template for one message, written out by hand."""
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def test_piped_turns_prefill_only_the_new_message(smollm2_path, tokenizer, tmp_path):
    n = 8
    proc = run_piped(smollm2_path, ["Hi!", "What is 2+2?", "/save conv.json"],
                     "-n", n, "--ctx", 256, "--system", "You are terse.", cwd=tmp_path)
    saved = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert saved[0]["content"] == "You are terse."
    answers = [saved[2]["content"], saved[4]["content"]]
    assert all(answers)
    assert proc.stdout == "".join(a + "\n" for a in answers)        # stdout: just the answers

    turns = [tuple(map(int, m.groups())) for m in STATS.finditer(proc.stderr)]
    assert len(turns) == 2, proc.stderr
    (tokens1, prefill1, _, _), (_, prefill2, used2, n_ctx) = turns
    generation_prompt = "<|im_start|>assistant\n"
    first_prompt = chatml("system", "You are terse.") + chatml("user", "Hi!") + generation_prompt
    assert prefill1 == len(tokenizer.encode(first_prompt, add_special=False))
    # The cache holds turn 1's prompt and answer; an answer cut by -n lacks its last token,
    # which was sampled but never evaluated. Turn 2 evaluates that, then only the new message.
    new_message = "<|im_end|>\n" + chatml("user", "What is 2+2?") + generation_prompt
    assert prefill2 == len(tokenizer.encode(new_message, add_special=False)) + (1 if tokens1 == n else 0)
    assert n_ctx == 256 and used2 > prefill1 + prefill2


def test_context_overflow_drops_old_turns_and_keeps_the_system_prompt(smollm2_path, tmp_path):
    messages = ["Tell me about ships.", "What is a sail?", "Name a sea.", "Who was Blackbeard?"]
    proc = run_piped(smollm2_path, [*messages, "/save conv.json"],
                     "-n", 8, "--ctx", 64, "--system", "You are a pirate.", cwd=tmp_path)
    turns = [tuple(map(int, m.groups())) for m in STATS.finditer(proc.stderr)]
    assert len(turns) == len(messages), proc.stderr           # every turn got an answer
    assert all(tokens >= 1 and used <= n_ctx == 64 for tokens, _, used, n_ctx in turns)
    assert "old messages to fit the context" in proc.stderr
    saved = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert saved[0] == {"role": "system", "content": "You are a pirate."}
    users = [m["content"] for m in saved if m["role"] == "user"]
    assert 1 <= len(users) < len(messages) and users == messages[-len(users):]
    assert saved[-1]["role"] == "assistant" and saved[-1]["content"]


QUOTES = '"' * 3       # ollama's multi-line delimiter


def test_piped_multiline_message_is_one_turn(smollm2_path, tokenizer, tmp_path):
    lines = [QUOTES, "Line one", "/help", f"line three{QUOTES}", f"{QUOTES}Hi!{QUOTES}", "/save conv.json"]
    proc = run_piped(smollm2_path, lines, "-n", 4, "--ctx", 256, "--system", "You are terse.", cwd=tmp_path)
    saved = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert [m["content"] for m in saved if m["role"] == "user"] == ["Line one\n/help\nline three", "Hi!"]
    assert "/help" not in proc.stderr and "/reset" not in proc.stderr      # a message, not a command
    (_, prefill1, _, _), _ = [tuple(map(int, m.groups())) for m in STATS.finditer(proc.stderr)]
    by_hand = chatml("system", "You are terse.") + chatml("user", "Line one\n/help\nline three") \
        + "<|im_start|>assistant\n"
    assert prefill1 == len(tokenizer.encode(by_hand, add_special=False))


def test_input_ending_inside_a_multiline_message_is_an_error(smollm2_path, tmp_path):
    proc = subprocess.run([sys.executable, *chat_argv(smollm2_path, "-q")], cwd=tmp_path, timeout=TIMEOUT,
                          input=f"{QUOTES}\nnever closed\n", capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "error: the input ended inside a multi-line message; it was not sent" in proc.stderr


def spawn_chat(model_path, cwd, *flags) -> pexpect.spawn:
    env = {**os.environ, "TERM": "dumb"}      # no terminal escapes from readline
    child = pexpect.spawn(sys.executable, chat_argv(model_path, *flags), cwd=str(cwd), env=env,
                          dimensions=(24, 200), encoding="utf-8", timeout=TIMEOUT)
    child.expect_exact(">>> ")
    return child


def read_answer(child) -> list[str]:
    """Everything printed until the next prompt, as the separate reads it arrived in."""
    reads = []
    while ">>> " not in "".join(reads):
        reads.append(child.read_nonblocking(4096, timeout=TIMEOUT))
    return reads


def test_terminal_session_streams_interrupts_saves_and_quits(smollm2_path, tmp_path):
    child = spawn_chat(smollm2_path, tmp_path, "-n", 10, "--ctx", 512)
    try:
        child.sendline("Hi!")
        reads = read_answer(child)
        text = "".join(reads)
        assert STATS.search(text) and "\x1b[2m[" in text         # the dim stats line
        answer_reads = [r for r in reads if "Hi!" not in r and "tokens" not in r and r.strip()]
        assert len(answer_reads) >= 2, reads                      # streamed, not printed at once

        child.sendline("What is 2+2?")
        assert STATS.search("".join(read_answer(child)))

        child.sendline("/set n 400")
        child.expect_exact(">>> ")
        child.sendline("Write a long story about a dragon.")
        child.expect_exact("dragon.\r\n")                         # our line echoed; the answer follows
        child.expect(r"\w\w+")                                     # the answer has begun
        child.send("\x03")
        child.expect_exact("interrupted")
        child.expect_exact(">>> ")

        child.sendline("/set n 6")
        child.expect_exact(">>> ")
        child.sendline("Thanks!")
        tokens = int(STATS.search("".join(read_answer(child))).group(1))
        assert tokens >= 1                                         # the chat goes on after Ctrl-C

        child.sendline("/save conv.json")
        child.expect_exact("saved 8 messages to conv.json")
        child.expect_exact(">>> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    saved = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert [m["content"] for m in saved if m["role"] == "user"] == \
        ["Hi!", "What is 2+2?", "Write a long story about a dragon.", "Thanks!"]
    story = saved[5]["content"]
    assert story.strip(), "the interrupted answer keeps what was said"


def test_ctrl_c_clears_the_line_and_ctrl_d_exits(smollm2_path, tmp_path):
    child = spawn_chat(smollm2_path, tmp_path, "-q")
    try:
        child.send("half a thought")
        child.send("\x03")                                        # discard the line, new prompt
        child.expect_exact(">>> ")
        child.send("\x04")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_chat_exits_0_after_ctrl_c_then_ctrl_d_and_the_answer_stays_in_the_cache(smollm2_path, tmp_path):
    # make shares its process group with the chat: a Ctrl-C that reaches make makes it kill
    # itself with SIGINT once the chat ends, however the chat ended
    makefile = tmp_path / "Makefile"
    makefile.write_text("chat:\n\t" + shlex.join([sys.executable, *chat_argv(smollm2_path, "-n", 400, "--ctx", 512)])
                        + "\n")
    env = {**os.environ, "TERM": "dumb"}
    child = pexpect.spawn("make", ["-s", "-f", str(makefile), "chat"], cwd=str(tmp_path), env=env,
                          dimensions=(24, 200), encoding="utf-8", timeout=TIMEOUT)
    try:
        child.expect_exact(">>> ")
        child.sendline("Write a long story about a dragon.")
        child.expect_exact("dragon.\r\n")
        child.expect(r"\w\w+")                                     # the answer has begun
        child.send("\x03")
        child.expect_exact("interrupted")
        tokens, _, used, _ = map(int, STATS.search(child.before).groups())
        assert used >= tokens > 0                                # the cache kept prompt and answer
        child.expect_exact(">>> ")
        child.sendline("/set n 4")
        child.expect_exact(">>> ")
        child.sendline("Thanks!")
        _, prefill, _, _ = map(int, STATS.search("".join(read_answer(child))).groups())
        assert prefill < used                                    # not the whole conversation again
        child.send("\x04")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert (child.exitstatus, child.signalstatus) == (0, None)


@pytest.mark.skipif(not (shutil.which("make") and shutil.which("bash")), reason="needs GNU make and bash")
def test_ctrl_z_under_make_suspends_the_whole_job_and_fg_resumes_the_chat(smollm2_path, tmp_path):
    # the chat has a process group of its own under make: Ctrl-Z must still stop make too,
    # or the shell would wait forever on a make that never stops
    (tmp_path / "Makefile").write_text("chat:\n\t" + shlex.join([sys.executable, *chat_argv(smollm2_path, "-n", 4, "-q")])
                                       + "\n")
    env = {**os.environ, "TERM": "dumb", "PS1": "$ "}
    shell = pexpect.spawn("bash", ["--norc", "--noprofile", "-i"], cwd=str(tmp_path), env=env,
                          dimensions=(24, 200), encoding="utf-8", timeout=TIMEOUT)
    try:
        shell.expect_exact("$ ")
        shell.sendline("make -s chat; echo make-status=$?")
        shell.expect_exact(">>> ")
        shell.send("\x1a")
        shell.expect("Stopped +make -s chat")
        shell.expect_exact("$ ")
        shell.sendline("fg")
        shell.sendline("Hi!")
        shell.expect_exact(">>> ")                                 # the chat answered after fg
        shell.send("\x04")
        shell.expect_exact("$ ")
        shell.sendline("echo status=$?")
        shell.expect(r"status=(\d+)")
        assert shell.match.group(1) == "0"
        shell.sendline("exit")
        shell.expect(pexpect.EOF)
    finally:
        shell.close()


def test_invalid_utf8_system_prompt_fails_before_the_model_loads(tmp_path, capsys):
    from lanternlm.cli import main as lantern

    assert lantern(["chat", str(tmp_path / "missing.gguf"), "-s", "caf\udce9"]) == 1
    assert capsys.readouterr().err == "lantern: error: -s/--system is not valid UTF-8 text (byte 0xe9 at character 3)\n"

def test_terminal_multiline_prompts_for_more_and_ctrl_c_discards_it(smollm2_path, tmp_path):
    child = spawn_chat(smollm2_path, tmp_path, "-q", "-n", 3)
    try:
        child.sendline(QUOTES)
        child.expect_exact("... ")                                   # the continuation prompt
        child.send("half a message")
        child.send("\x03")                                           # drops the whole message
        child.expect_exact(">>> ")
        child.sendline(QUOTES + "Two")
        child.expect_exact("... ")
        child.sendline("lines" + QUOTES)
        read_answer(child)
        child.sendline("/save conv.json")
        child.expect_exact(">>> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    saved = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert [m["content"] for m in saved if m["role"] == "user"] == ["Two\nlines"]


# ---------------------------------------------------------------- commands, in-process

@pytest.fixture(scope="module")
def session(smollm2_path):
    return ChatSession(Model.load(smollm2_path, n_ctx=64, threads=1), system_prompt="Be brief.",
                       temperature=0.0, max_tokens=8)


def run_commands(session, *lines) -> str:
    err = io.StringIO()
    repl = ChatREPL(session, interactive=True, quiet=True, out=io.StringIO(), err=err)
    for line in lines:
        assert repl.command(line) is True
    return err.getvalue()


def test_system_reset_and_help(session):
    session.messages[1:] = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    run_commands(session, "/system Be very brief.")
    assert session.messages[0] == {"role": "system", "content": "Be very brief."}
    assert "conversation cleared (system prompt kept)" in run_commands(session, "/reset")
    assert session.messages == [{"role": "system", "content": "Be very brief."}]
    listing = run_commands(session, "/help")
    assert all(c.usage in listing for c in COMMANDS.values())
    assert "unknown command /nope" in run_commands(session, "/nope")
    assert ChatREPL(session, interactive=True, quiet=True).command("/quit") is False


def test_set_validates_and_updates_options(session):
    before = dict(session.options)
    assert "error: bad value 'hot' for temp" in run_commands(session, "/set temp hot")
    assert "top_p must be in [0, 1]" in run_commands(session, "/set top-p 2")
    assert "unknown setting 'warmth'" in run_commands(session, "/set warmth 1")
    assert session.options == before
    run_commands(session, "/set n -1", "/set seed 5", "/set top-k 3")
    assert session.options == {**before, "max_tokens": None, "seed": 5, "top_k": 3}
    assert "n=-1" in run_commands(session, "/set")


def test_save_then_load_round_trips_and_bad_files_are_refused(session, tmp_path):
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                    {"role": "assistant", "content": "A"}]
    session.messages[:] = conversation
    path = tmp_path / "c.json"
    run_commands(session, f"/save {path}")
    session.messages[:] = []
    assert "loaded 3 messages" in run_commands(session, f"/load {path}")
    assert session.messages == conversation

    bad = {"notjson.json": "{", "nolist.json": '{"messages": 3}',
           "role.json": '[{"role": "robot", "content": "x"}]',
           "late_system.json": '[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]'}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        assert run_commands(session, f"/load {tmp_path / name}").startswith("error: "), name
    assert run_commands(session, f"/load {tmp_path / 'absent.json'}").startswith("error: ")
    assert session.messages == conversation                       # unchanged by the failures
