"""`lantern chat [MODEL]`: a multi-turn chat in the terminal, answers streamed as they come.

A `ChatSession` keeps the conversation; the model's KV cache already holds every previous
turn, so each turn only prefills the new message. When the context fills, the oldest turns
are dropped (the system prompt stays) and the chat goes on.

Interactive (stdin is a terminal): line editing and history through readline, Ctrl-C stops
the current answer (or clears the line being typed), Ctrl-D or /quit exits, a dim line after
each answer gives its tokens and speed. Piped (stdin is not a terminal): every input line is
one message, its answer is one block on stdout, everything else goes to stderr, and the chat
ends at end of input — so `printf 'Hi\\n' | lantern chat -q` prints just the answer.

A message of several lines is written as in ollama: a line starting with three double quotes
opens it, a line ending with them closes it (a line both starting and ending with them is a
one-line message); the lines between, commands included, are the message.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..formats.catalog import DEFAULT_MODEL
from .cli_common import (SETTINGS, add_constraint_args, add_runtime_args, add_sampling_args, apply_setting,
                         constraint_option, describe_settings, dim, generation_summary, load_model,
                         max_tokens_option, sampling_options, speed, utf8_argument)
from .terminal_group import own_foreground_group

PROMPT = ">>> "
CONTINUATION_PROMPT = "... "    # inside a multi-line message
DEFAULT_CHAT_CTX = 2048
DEFAULT_CHAT_MAX_TOKENS = 512
ROLES = ("system", "user", "assistant")


def configure_parser(p) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"GGUF path or catalog name (default {DEFAULT_MODEL}, downloaded on first use)")
    p.add_argument("-s", "--system", metavar="TEXT", help="system prompt")
    p.add_argument("-q", "--quiet", action="store_true", help="no banner and no stats line after each answer")
    add_sampling_args(p, max_tokens=DEFAULT_CHAT_MAX_TOKENS)
    add_constraint_args(p)
    add_runtime_args(p, ctx=DEFAULT_CHAT_CTX)


@dataclass
class Totals:
    """Counters over the whole chat, for /stats."""

    answers: int = 0
    tokens: int = 0
    seconds: float = 0.0


class MultilineMessage:
    """ollama's multi-line input: a line starting with QUOTES opens a message, a line ending
    with them closes it. `feed(line)` returns the finished message, None while it is open."""

    QUOTES = '"' * 3

    def __init__(self):
        self.lines: list[str] | None = None     # the open message's lines so far, None when closed

    @property
    def open(self) -> bool:
        return self.lines is not None

    def starts(self, line: str) -> bool:
        return self.open or line.startswith(self.QUOTES)

    def feed(self, line: str) -> str | None:
        if self.lines is None:
            line = line[len(self.QUOTES):]
            self.lines = []
        closed = line.endswith(self.QUOTES)
        self.lines.append(line[:-len(self.QUOTES)] if closed else line)
        if not closed:
            return None
        text, self.lines = "\n".join(self.lines).strip(), None
        return text

    def discard(self) -> None:
        self.lines = None


@dataclass(frozen=True)
class Command:
    run: Callable[["ChatREPL", str], bool]     # (repl, argument text) -> keep chatting?
    usage: str
    help: str


class ChatREPL:
    """The read-answer loop over a ChatSession. `out` receives answers, `err` the rest."""

    def __init__(self, session, interactive: bool, quiet: bool, out=None, err=None):
        self.session = session
        self.model = session.model
        self.interactive = interactive
        self.quiet = quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.totals = Totals()
        self.failed_turns = 0
        self.multiline = MultilineMessage()

    # ------------------------------------------------------------------ output

    def note(self, text: str, faint: bool = False) -> None:
        self.out.flush()                # keep stdout/stderr in order on a shared terminal
        print(dim(text, self.err) if faint else text, file=self.err, flush=True)

    # ------------------------------------------------------------------ the loop

    def lines(self) -> Iterator[str]:
        """Input lines; interactively, Ctrl-C while typing discards the line."""
        if not self.interactive:
            for line in sys.stdin:
                yield line.rstrip("\r\n")
            return
        while True:
            try:
                yield input(CONTINUATION_PROMPT if self.multiline.open else PROMPT)
            except KeyboardInterrupt:
                self.multiline.discard()
                print(file=self.out, flush=True)
            except EOFError:
                print(file=self.out, flush=True)
                return

    def run(self) -> int:
        for line in self.lines():
            if self.multiline.starts(line):
                message = self.multiline.feed(line)
                if message:
                    self.answer(message)
            elif not line.strip():
                continue
            elif line.startswith("/"):
                if not self.command(line):
                    break
            else:
                self.answer(line)
        if self.multiline.open:
            self.multiline.discard()
            self.failed_turns += 1
            self.note("error: the input ended inside a multi-line message; it was not sent")
        return 1 if self.failed_turns and not self.interactive else 0

    def command(self, line: str) -> bool:
        name, _, arg = line.strip().partition(" ")
        cmd = COMMANDS.get(name)
        if cmd is None:
            self.note(f"unknown command {name}; /help lists the commands")
            return True
        return cmd.run(self, arg.strip())

    def answer(self, text: str) -> None:
        """Send one user message and stream the reply; Ctrl-C (interactive) cuts it short."""
        before = len(self.session.messages)
        try:
            pieces = self.session.stream(text)
        except ValueError as exc:           # e.g. a message longer than the whole context
            self.failed_turns += 1
            self.note(f"error: {exc}")
            return
        dropped = before + 1 - len(self.session.messages)
        start = time.perf_counter()
        interrupted = False
        try:
            for piece in pieces:
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            if not self.interactive:
                raise
            interrupted = True
        finally:
            pieces.close()              # the reply enters the history as far as it got
        if interrupted:
            self.forget_unanswered()
        self.out.write("\n")
        self.out.flush()
        self.account(time.perf_counter() - start)
        if not self.quiet:
            self.note(self.answer_summary(dropped, interrupted), faint=True)

    def forget_unanswered(self) -> None:
        """After Ctrl-C before a word of the answer: drop the message rather than keep an
        empty turn (a partial answer stays, as the model said it)."""
        messages = self.session.messages
        if messages and messages[-1]["role"] == "user":          # the reply never started
            del messages[-1]
        elif len(messages) >= 2 and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            del messages[-2:]

    def account(self, seconds: float) -> None:
        stats = self.session.last_stats
        self.totals.answers += 1
        self.totals.seconds += seconds
        self.totals.tokens += stats.completion_tokens if stats else 0

    def answer_summary(self, dropped_messages: int, interrupted: bool) -> str:
        stats = self.session.last_stats
        parts = [generation_summary(stats) if stats else "no tokens",
                 f"context {len(self.model.context)}/{self.model.n_ctx}"]
        if dropped_messages:
            parts.append(f"dropped {dropped_messages} old messages to fit the context")
        if interrupted:
            parts.append("interrupted")
        elif self.session.last_finish_reason == "length":
            parts.append("cut: context full" if self.model.context.full else "cut: -n limit")
        return "[" + " | ".join(parts) + "]"

    # ------------------------------------------------------------------ commands

    def cmd_help(self, arg: str) -> bool:
        width = max(len(c.usage) for c in COMMANDS.values())
        for c in dict.fromkeys(COMMANDS.values()):
            self.note(f"  {c.usage:<{width}}  {c.help}")
        self.note("  Ctrl-C stops an answer, Ctrl-D exits.")
        quotes = MultilineMessage.QUOTES
        self.note(f"  {quotes} starts a message of several lines; a line ending with {quotes} sends it.")
        return True

    def cmd_reset(self, arg: str) -> bool:
        self.session.clear()
        self.note("conversation cleared" + (" (system prompt kept)" if self.session.has_system_prompt else ""))
        return True

    def cmd_system(self, arg: str) -> bool:
        messages = self.session.messages
        if not arg:
            current = messages[0]["content"] if self.session.has_system_prompt else None
            self.note(f"system prompt: {current!r}" if current is not None
                      else "no system prompt (the chat template's default applies)")
        elif self.session.has_system_prompt:
            messages[0] = {"role": "system", "content": arg}
            self.note("system prompt replaced")
        else:
            messages.insert(0, {"role": "system", "content": arg})
            self.note("system prompt set")
        return True

    def cmd_set(self, arg: str) -> bool:
        name, _, value = arg.partition(" ")
        if not name:
            self.note(describe_settings(self.session.options))
        elif not value.strip():
            self.note(f"usage: /set NAME VALUE (NAME: {', '.join(SETTINGS)})")
        else:
            try:
                self.session.options = apply_setting(self.session.options, name, value.strip())
            except ValueError as exc:
                self.note(f"error: {exc}")
            else:
                self.note(f"{name} = {value.strip()}")
        return True

    def cmd_save(self, arg: str) -> bool:
        if not arg:
            self.note("usage: /save FILE")
            return True
        doc = {"model": self.model.name, "messages": self.session.messages}
        try:
            Path(arg).expanduser().write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
        except OSError as exc:
            self.note(f"error: cannot save to {arg}: {exc.strerror or exc}")
            return True
        self.note(f"saved {len(self.session.messages)} messages to {arg}")
        return True

    def cmd_load(self, arg: str) -> bool:
        if not arg:
            self.note("usage: /load FILE")
            return True
        try:
            messages = read_conversation(Path(arg).expanduser())
        except (OSError, ValueError) as exc:
            self.note(f"error: {exc}")
            return True
        self.session.messages[:] = messages
        self.note(f"loaded {len(messages)} messages from {arg}")
        return True

    def cmd_stats(self, arg: str) -> bool:
        used, n_ctx = len(self.model.context), self.model.n_ctx
        n_user = sum(m["role"] == "user" for m in self.session.messages)
        self.note(f"context: {used}/{n_ctx} tokens in the cache ({100 * used / n_ctx:.0f}%), "
                  f"conversation: {n_user} turns, {self.session.prompt_tokens()} tokens once rendered")
        stats = self.session.last_stats
        if stats is not None:
            self.note(f"last answer: {generation_summary(stats)} (reused {stats.reused_tokens} cached)")
        t = self.totals
        self.note(f"session: {t.answers} answers, {t.tokens} tokens in {t.seconds:.1f} s "
                  f"({speed(t.tokens, t.seconds)} overall)")
        return True

    def cmd_quit(self, arg: str) -> bool:
        return False


def read_conversation(path: Path) -> list[dict[str, str]]:
    """Messages from a /save file ({"messages": [...]}, or a bare list), validated."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    messages = doc.get("messages") if isinstance(doc, dict) else doc
    if not isinstance(messages, list):
        raise ValueError(f"{path} holds no message list (expected {{\"messages\": [...]}})")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise ValueError(f"{path}: message {i} must be {{\"role\": one of {ROLES}, \"content\": str}}, got {m!r}")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"{path}: a system message may only come first (message {i})")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


_quit = Command(ChatREPL.cmd_quit, "/quit", "leave the chat (also /exit, Ctrl-D)")
COMMANDS: dict[str, Command] = {
    "/help": Command(ChatREPL.cmd_help, "/help", "this list"),
    "/reset": Command(ChatREPL.cmd_reset, "/reset", "forget the conversation (the system prompt stays)"),
    "/system": Command(ChatREPL.cmd_system, "/system [TEXT]", "set the system prompt, or show it"),
    "/set": Command(ChatREPL.cmd_set, "/set [NAME VALUE]", "change a sampling setting (temp, top-k, seed, n, ...), "
                                                       "or list them"),
    "/save": Command(ChatREPL.cmd_save, "/save FILE", "write the conversation to FILE as JSON"),
    "/load": Command(ChatREPL.cmd_load, "/load FILE", "continue a conversation saved with /save"),
    "/stats": Command(ChatREPL.cmd_stats, "/stats", "tokens, speed and context used"),
    "/quit": _quit,
    "/exit": _quit,
}


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  (importing it gives input() editing and history)
    except ImportError:             # not on every platform; plain input() still works
        pass


def main(args) -> int:
    from .chat_session import ChatSession

    options = {**sampling_options(args), "max_tokens": max_tokens_option(args), "grammar": constraint_option(args)}
    utf8_argument(args.system, "-s/--system")
    interactive = sys.stdin.isatty()
    # interactively, Ctrl-C belongs to the chat alone (not to a `make chat` around it)
    with own_foreground_group(sys.stdin.fileno()) if interactive else nullcontext():
        model = load_model(args.model, args.ctx, args)
        session = ChatSession(model, system_prompt=args.system, **options)
        repl = ChatREPL(session, interactive=interactive, quiet=args.quiet)
        if interactive:
            _enable_line_editing()
            if not args.quiet:
                repl.note(f"{Path(model.name).name} · context {model.n_ctx} tokens · "
                          f"/help for commands, Ctrl-D to quit", faint=True)
        return repl.run()
