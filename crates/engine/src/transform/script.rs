//! The JavaScript step: one QuickJS runtime per run, in a sandbox.
//!
//! Why a fresh runtime and context for every message: a context keeps the
//! script's globals, so reusing one would let one message's run influence
//! the next (a counter, a cached value, a patched built-in), which breaks
//! both isolation between patients and the determinism retries rely on.
//! Creating a runtime and a full context costs about 0.1 ms in a release
//! build, small beside what a script does and what delivery costs.
//!
//! The sandbox is what QuickJS does not have rather than what we remove:
//! rquickjs links only the engine (no quickjs-libc, so no `std`/`os`
//! modules, `print`, timers, files or sockets), and no module loader is
//! installed, so `import()` fails. The only objects that reach outside are
//! the ones installed here (`msg`, `channelMap`, `destinationSet`,
//! `logger`), and they touch only this run's copy of the message, map and
//! routing, which are written back only if the script succeeds.
//!
//! Limits: the runtime's memory limit (QuickJS refuses allocations past
//! it), its stack limit (a RangeError past it), and a deadline checked by
//! the interrupt handler QuickJS calls regularly while running bytecode
//! (also inside promise jobs).
//!
//! A script fails the same way whether it throws in its body or in a
//! promise job it queued (an `async` function after an `await`, a `.then`
//! callback, `queueMicrotask`), and a promise rejected with no handler by
//! the time the jobs are done counts as an uncaught exception: otherwise a
//! check written as an `async` function could never stop a message.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hl7v2::{Delimiters, Message, Path, Presence};
use rquickjs::context::EvalOptions;
use rquickjs::convert::Coerced;
use rquickjs::function::Opt;
use rquickjs::{
    CatchResultExt, CaughtError, Context, Ctx, Exception, FromJs, Function, Object, Persistent, Runtime, Value,
};

use super::{TransformContext, TransformError, TransformOutcome, remove_segments, segment_ref};

/// The script is run as the body of a function, as Mirth does, so `return`
/// works and `var`s stay local. The prefix has no newline so line numbers
/// are the script's own; columns on line 1 are shifted by its length.
const PREFIX: &str = "(function(){";
/// The suffix starts on a new line so a `//` comment on the script's last
/// line cannot swallow it.
const SUFFIX: &str = "\n})()";

/// Longest text a `logger` call writes (characters).
const MAX_LOG_CHARS: usize = 2000;

/// A step's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) memory_bytes: usize,
    pub(crate) stack_bytes: usize,
}

/// A compiled (syntax-checked) script.
#[derive(Debug)]
pub(crate) struct Script {
    /// The script wrapped in [`PREFIX`] and [`SUFFIX`].
    wrapped: String,
    /// Shown as the file name in QuickJS's stack traces: the script's file,
    /// or the step's config path for an inline script.
    label: String,
    limits: Limits,
}

/// What the run's JavaScript objects read and write. Shared by the native
/// functions installed in the context; written back to the caller's message,
/// context and outcome only when the script succeeds.
struct State {
    msg: Message,
    channel_map: BTreeMap<String, String>,
    outcome: TransformOutcome,
    step: String,
    channel: String,
    message_id: String,
    /// What the message and the channel map may grow to: the script's
    /// memory limit. They live outside QuickJS's heap, so without this a
    /// loop of `msg.addSegment` could grow Rust memory without bound.
    budget: usize,
    /// Set when a write was refused for exceeding `budget`; the run then
    /// fails with [`TransformError::MemoryLimit`] even if the script caught
    /// the exception.
    over_budget: bool,
}

impl State {
    fn map_bytes(&self) -> usize {
        self.channel_map.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Refuses (and remembers) a write that would take the message and the
    /// channel map past the budget.
    fn reserve(&mut self, cx: &Ctx<'_>, extra: usize) -> rquickjs::Result<()> {
        if self.msg.as_bytes().len() + self.map_bytes() + extra > self.budget {
            self.over_budget = true;
            return Err(Exception::throw_internal(
                cx,
                "out of memory: the message and channel map would exceed the script's memory limit",
            ));
        }
        Ok(())
    }
}

type Shared = Rc<RefCell<State>>;

/// How a run failed, before it is turned into a [`TransformError`].
enum Failure {
    /// An exception: its name and message and where QuickJS says it was.
    Thrown { message: String, line: Option<u32>, column: Option<u32> },
    /// An uncaught `null`/`undefined`: what QuickJS throws when it runs out
    /// of memory so completely that it cannot allocate the error object.
    Nullish,
    /// The engine could not be set up.
    Engine(String),
}

impl Script {
    pub(crate) fn new(source: String, label: String, limits: Limits) -> Script {
        Script { wrapped: format!("{PREFIX}{source}{SUFFIX}"), label, limits }
    }

    /// Parses the script without running it (the wrapper function is
    /// created, not called). `Err` is the message for `plexus check`.
    pub(crate) fn check_syntax(&self) -> Result<(), String> {
        let definition = &self.wrapped[..self.wrapped.len() - 2]; // drop the call "()"
        let runtime = self.runtime().map_err(|e| format!("the JavaScript engine could not start: {e}"))?;
        let deadline = Instant::now() + self.limits.timeout.max(Duration::from_secs(1));
        let interrupted = Rc::new(Cell::new(false));
        set_deadline(&runtime, deadline, &interrupted);
        let context = Context::full(&runtime).map_err(|e| format!("the JavaScript engine could not start: {e}"))?;
        let result = context.with(|cx| {
            let evaluated: Result<Value, _> = cx.eval_with_options(definition, self.eval_options()).catch(&cx);
            evaluated.map(|_| ()).map_err(|e| self.failure(&cx, e))
        });
        match result {
            Ok(()) => Ok(()),
            Err(Failure::Thrown { message, line, column }) => {
                Err(format!("does not compile{}: {message}", super::at(line, column)))
            }
            Err(Failure::Nullish) => Err("does not compile: the memory limit is too small to parse it".into()),
            Err(Failure::Engine(e)) => Err(format!("the JavaScript engine could not start: {e}")),
        }
    }

    /// Runs the script on `msg` (a copy, written back on success).
    pub(crate) fn run(
        &self,
        step: &str,
        msg: &mut Message,
        ctx: &mut TransformContext,
        outcome: &mut TransformOutcome,
    ) -> Result<(), TransformError> {
        let engine_error = |reason: String| TransformError::Engine { step: step.to_owned(), reason };
        let runtime = self.runtime().map_err(|e| engine_error(e.to_string()))?;
        let interrupted = Rc::new(Cell::new(false));
        set_deadline(&runtime, Instant::now() + self.limits.timeout, &interrupted);
        let state: Shared = Rc::new(RefCell::new(State {
            msg: msg.clone(),
            channel_map: ctx.channel_map.clone(),
            outcome: outcome.clone(),
            step: step.to_owned(),
            channel: ctx.channel.clone(),
            message_id: ctx.message_id.clone(),
            budget: self.limits.memory_bytes,
            over_budget: false,
        }));
        // Declared after the runtime, so dropped (and emptied) before it.
        let unhandled = Unhandled::track(&runtime);
        let result = match Context::full(&runtime) {
            Err(e) => Err(Failure::Engine(e.to_string())),
            Ok(context) => context
                .with(|cx| {
                    install(&cx, &state)
                        .map_err(|e| Failure::Engine(format!("installing the script's objects: {e}")))?;
                    let evaluated: Result<Value, _> =
                        cx.eval_with_options(self.wrapped.as_str(), self.eval_options()).catch(&cx);
                    evaluated.map(drop).map_err(|e| self.failure(&cx, e))
                })
                .and_then(|()| self.run_jobs(&runtime))
                .and_then(|()| context.with(|cx| unhandled.first(&cx).map_or(Ok(()), |e| Err(self.failure(&cx, e))))),
        };
        drop(unhandled);
        // A refused write comes first: a script that caught it may then
        // have run into its deadline, but the budget was the cause.
        if state.borrow().over_budget {
            return Err(TransformError::MemoryLimit { step: step.to_owned(), limit_bytes: self.limits.memory_bytes });
        }
        if interrupted.get() {
            return Err(TransformError::Timeout { step: step.to_owned(), limit: self.limits.timeout });
        }
        match result {
            Ok(()) => {
                let mut s = state.borrow_mut();
                *msg = std::mem::replace(&mut s.msg, Message::new(Delimiters::default()));
                ctx.channel_map = std::mem::take(&mut s.channel_map);
                *outcome = std::mem::take(&mut s.outcome);
                Ok(())
            }
            Err(Failure::Nullish) => {
                Err(TransformError::MemoryLimit { step: step.to_owned(), limit_bytes: self.limits.memory_bytes })
            }
            Err(Failure::Thrown { message, .. }) if is_out_of_memory(&message) => {
                Err(TransformError::MemoryLimit { step: step.to_owned(), limit_bytes: self.limits.memory_bytes })
            }
            Err(Failure::Thrown { message, line, column }) => {
                Err(TransformError::Script { step: step.to_owned(), message, line, column })
            }
            Err(Failure::Engine(reason)) => Err(engine_error(reason)),
        }
    }

    /// Runs the promise jobs the script queued (`async` functions after an
    /// `await`, `.then` callbacks, `queueMicrotask`), still under the
    /// deadline, until none is left. A job that throws fails the run as a
    /// throw in the script's body does: `Ctx::execute_pending_job` would
    /// discard that exception, so the runtime's variant is used, which
    /// hands it back.
    fn run_jobs(&self, runtime: &Runtime) -> Result<(), Failure> {
        loop {
            match runtime.execute_pending_job() {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(job) => {
                    return Err(job.0.with(|cx| {
                        let thrown = CaughtError::from_error(&cx, rquickjs::Error::Exception);
                        self.failure(&cx, thrown)
                    }));
                }
            }
        }
    }

    /// A runtime for one run; dropping it frees everything the script made.
    fn runtime(&self) -> rquickjs::Result<Runtime> {
        let runtime = Runtime::new()?;
        runtime.set_memory_limit(self.limits.memory_bytes);
        runtime.set_max_stack_size(self.limits.stack_bytes);
        Ok(runtime)
    }

    fn eval_options(&self) -> EvalOptions {
        let mut options = EvalOptions::default();
        options.global = true;
        options.strict = false;
        options.backtrace_barrier = true;
        options.promise = false;
        options.filename = Some(self.label.clone());
        options
    }

    /// Reads what was thrown: name, message, and the line and column of the
    /// first stack frame in this script.
    fn failure<'js>(&self, cx: &Ctx<'js>, error: CaughtError<'js>) -> Failure {
        match error {
            CaughtError::Exception(e) => {
                let name: Option<String> = e.as_object().get("name").ok();
                let message = e.message().unwrap_or_default();
                let message = match name {
                    Some(n) if !n.is_empty() && !message.starts_with(&n) => format!("{n}: {message}"),
                    _ => message,
                };
                let (line, column) = e.stack().map(|s| self.position(&s)).unwrap_or_default();
                Failure::Thrown { message, line, column }
            }
            CaughtError::Value(v) if v.is_null() || v.is_undefined() => Failure::Nullish,
            CaughtError::Value(v) => {
                let shown = Coerced::<String>::from_js(cx, v).map(|c| c.0).unwrap_or_else(|_| "a value".into());
                Failure::Thrown {
                    message: format!("uncaught exception: {}", truncate(&shown)),
                    line: None,
                    column: None,
                }
            }
            CaughtError::Error(e) => Failure::Thrown { message: e.to_string(), line: None, column: None },
        }
    }

    /// The first `label:LINE:COL` in a QuickJS stack trace, with the column
    /// of line 1 corrected for [`PREFIX`].
    fn position(&self, stack: &str) -> (Option<u32>, Option<u32>) {
        let needle = format!("{}:", self.label);
        for (i, _) in stack.match_indices(&needle) {
            let rest = &stack[i + needle.len()..];
            let line_text: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(line) = line_text.parse::<u32>() else { continue };
            let column = rest[line_text.len()..]
                .strip_prefix(':')
                .map(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>())
                .and_then(|c| c.parse::<u32>().ok())
                .map(|c| if line == 1 { c.saturating_sub(PREFIX.len() as u32).max(1) } else { c });
            return (Some(line), column);
        }
        (None, None)
    }
}

/// The promises of a run that were rejected with no handler yet, each with
/// its reason, in the order they were rejected: QuickJS reports a rejection
/// when it happens (`handled == false`) and again if a handler is attached
/// later (`handled == true`), so whatever is left once the jobs are done
/// was never handled, the promise form of an uncaught exception (a
/// rejected `async` function nobody awaited, `Promise.reject(...)`).
///
/// The values are kept alive with `Persistent`, which must not outlive the
/// runtime (QuickJS aborts the process when a runtime is freed with values
/// still held): dropping this empties the list, so it is declared after
/// the runtime and dropped before it.
struct Unhandled(Rc<RefCell<Vec<Rejection>>>);

/// A rejected promise and its reason.
type Rejection = (Persistent<Value<'static>>, Persistent<Value<'static>>);

impl Unhandled {
    /// Installs the tracker on `runtime`.
    fn track(runtime: &Runtime) -> Unhandled {
        let list: Rc<RefCell<Vec<Rejection>>> = Rc::default();
        let tracked = Rc::clone(&list);
        runtime.set_host_promise_rejection_tracker(Some(Box::new(move |cx, promise, reason, handled| {
            let Ok(mut list) = tracked.try_borrow_mut() else { return };
            if handled {
                list.retain(|(p, _)| p.clone().restore(&cx).map_or(true, |p| p != promise));
            } else {
                list.push((Persistent::save(&cx, promise), Persistent::save(&cx, reason)));
            }
        })));
        Unhandled(list)
    }

    /// The reason of the first rejection still unhandled, as if thrown.
    fn first<'js>(&self, cx: &Ctx<'js>) -> Option<CaughtError<'js>> {
        let reason = self.0.borrow().first()?.1.clone().restore(cx).ok()?;
        Some(match reason.as_object().and_then(|o| Exception::from_object(o.clone())) {
            Some(e) => CaughtError::Exception(e),
            None => CaughtError::Value(reason),
        })
    }
}

impl Drop for Unhandled {
    fn drop(&mut self) {
        self.0.borrow_mut().clear();
    }
}

fn set_deadline(runtime: &Runtime, deadline: Instant, interrupted: &Rc<Cell<bool>>) {
    let flag = Rc::clone(interrupted);
    runtime.set_interrupt_handler(Some(Box::new(move || {
        let stop = Instant::now() >= deadline;
        if stop {
            flag.set(true);
        }
        stop
    })));
}

fn is_out_of_memory(message: &str) -> bool {
    message.ends_with("out of memory")
}

fn truncate(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_LOG_CHARS) {
        None => Cow::Borrowed(text),
        Some((i, _)) => Cow::Owned(format!("{}...", &text[..i])),
    }
}

// ---------------------------------------------------------------------------
// The objects scripts see.

/// Borrows the run's state, or throws if it is already borrowed (it cannot
/// be: native functions do not call back into JavaScript while holding it,
/// but a panic must never unwind through QuickJS).
fn state<'a, 'js>(cx: &Ctx<'js>, shared: &'a Shared) -> rquickjs::Result<std::cell::RefMut<'a, State>> {
    shared.try_borrow_mut().map_err(|_| Exception::throw_internal(cx, "re-entrant call into the message"))
}

fn parse_path(cx: &Ctx<'_>, function: &str, text: &str) -> rquickjs::Result<Path> {
    Path::parse(text).map_err(|e| {
        Exception::throw_type(
            cx,
            &format!("{function}: invalid path {text:?}: expected {} at character {}", e.reason, e.position + 1),
        )
    })
}

/// A value given to `set`/`put`: `null` and `undefined` are the empty
/// string, anything else is converted as JavaScript's `String(value)` does.
fn text_of<'js>(cx: &Ctx<'js>, value: Opt<Value<'js>>) -> rquickjs::Result<String> {
    match value.0 {
        None => Ok(String::new()),
        Some(v) if v.is_null() || v.is_undefined() => Ok(String::new()),
        Some(v) => Ok(Coerced::<String>::from_js(cx, v)?.0),
    }
}

fn install<'js>(cx: &Ctx<'js>, shared: &Shared) -> rquickjs::Result<()> {
    let globals = cx.globals();
    globals.set("msg", message_object(cx, shared)?)?;
    globals.set("channelMap", channel_map_object(cx, shared)?)?;
    globals.set("destinationSet", destination_set_object(cx, shared)?)?;
    globals.set("logger", logger_object(cx, shared)?)?;
    Ok(())
}

fn message_object<'js>(cx: &Ctx<'js>, shared: &Shared) -> rquickjs::Result<Object<'js>> {
    let msg = Object::new(cx.clone())?;

    let s = Rc::clone(shared);
    msg.set(
        "get",
        Function::new(cx.clone(), move |cx: Ctx<'js>, path: String| -> rquickjs::Result<String> {
            let path = parse_path(&cx, "msg.get", &path)?;
            let st = state(&cx, &s)?;
            Ok(st.msg.valued(path).map(Cow::into_owned).unwrap_or_default())
        })?,
    )?;

    let s = Rc::clone(shared);
    msg.set(
        "exists",
        Function::new(cx.clone(), move |cx: Ctx<'js>, target: String| -> rquickjs::Result<bool> {
            if let Some((name, occurrence)) = segment_ref(&target) {
                let st = state(&cx, &s)?;
                return Ok(st.msg.segment_occurrence(name, occurrence.unwrap_or(1)).is_some());
            }
            let path = parse_path(&cx, "msg.exists", &target)?;
            let st = state(&cx, &s)?;
            Ok(st.msg.presence(path) == Presence::Valued)
        })?,
    )?;

    let s = Rc::clone(shared);
    msg.set(
        "set",
        Function::new(cx.clone(), move |cx: Ctx<'js>, path: String, value: Opt<Value<'js>>| -> rquickjs::Result<()> {
            // Convert first: String(value) may run the script's own
            // toString, which may call msg.get.
            let value = text_of(&cx, value)?;
            let path = parse_path(&cx, "msg.set", &path)?;
            let mut st = state(&cx, &s)?;
            st.reserve(&cx, value.len())?;
            st.msg.set(path, &value).map_err(|e| Exception::throw_message(&cx, &format!("msg.set({path}): {e}")))
        })?,
    )?;

    let s = Rc::clone(shared);
    msg.set(
        "delete",
        Function::new(cx.clone(), move |cx: Ctx<'js>, target: String| -> rquickjs::Result<()> {
            if let Some((name, occurrence)) = segment_ref(&target) {
                if name == "MSH" {
                    return Err(Exception::throw_message(&cx, "msg.delete: the MSH segment cannot be deleted"));
                }
                let mut st = state(&cx, &s)?;
                remove_segments(&mut st.msg, name, occurrence);
                return Ok(());
            }
            let path = parse_path(&cx, "msg.delete", &target)?;
            let mut st = state(&cx, &s)?;
            super::clear(&mut st.msg, &path)
                .map_err(|e| Exception::throw_message(&cx, &format!("msg.delete({path}): {e}")))
        })?,
    )?;

    let s = Rc::clone(shared);
    msg.set(
        "count",
        Function::new(cx.clone(), move |cx: Ctx<'js>, name: String| -> rquickjs::Result<u32> {
            let st = state(&cx, &s)?;
            Ok(u32::try_from(st.msg.segments_named(&name).count()).unwrap_or(u32::MAX))
        })?,
    )?;

    let s = Rc::clone(shared);
    msg.set(
        "addSegment",
        Function::new(cx.clone(), move |cx: Ctx<'js>, raw: String| -> rquickjs::Result<()> {
            let mut st = state(&cx, &s)?;
            st.reserve(&cx, raw.len())?;
            st.msg
                .push_segment(raw.as_bytes())
                .map(|_| ())
                .map_err(|e| Exception::throw_message(&cx, &format!("msg.addSegment: {e}")))
        })?,
    )?;

    let s = Rc::clone(shared);
    msg.set(
        "toString",
        Function::new(cx.clone(), move |cx: Ctx<'js>| -> rquickjs::Result<String> {
            let st = state(&cx, &s)?;
            Ok(String::from_utf8_lossy(&st.msg.to_standard_form()).into_owned())
        })?,
    )?;
    Ok(msg)
}

fn channel_map_object<'js>(cx: &Ctx<'js>, shared: &Shared) -> rquickjs::Result<Object<'js>> {
    let map = Object::new(cx.clone())?;

    let s = Rc::clone(shared);
    map.set(
        "get",
        Function::new(cx.clone(), move |cx: Ctx<'js>, key: Coerced<String>| -> rquickjs::Result<Option<String>> {
            Ok(state(&cx, &s)?.channel_map.get(&key.0).cloned())
        })?,
    )?;

    let s = Rc::clone(shared);
    map.set(
        "put",
        Function::new(
            cx.clone(),
            move |cx: Ctx<'js>, key: Coerced<String>, value: Opt<Value<'js>>| -> rquickjs::Result<Option<String>> {
                let value = text_of(&cx, value)?;
                let mut st = state(&cx, &s)?;
                st.reserve(&cx, key.0.len() + value.len())?;
                Ok(st.channel_map.insert(key.0, value))
            },
        )?,
    )?;

    let s = Rc::clone(shared);
    map.set(
        "containsKey",
        Function::new(cx.clone(), move |cx: Ctx<'js>, key: Coerced<String>| -> rquickjs::Result<bool> {
            Ok(state(&cx, &s)?.channel_map.contains_key(&key.0))
        })?,
    )?;

    let s = Rc::clone(shared);
    map.set(
        "remove",
        Function::new(cx.clone(), move |cx: Ctx<'js>, key: Coerced<String>| -> rquickjs::Result<Option<String>> {
            Ok(state(&cx, &s)?.channel_map.remove(&key.0))
        })?,
    )?;
    Ok(map)
}

fn destination_set_object<'js>(cx: &Ctx<'js>, shared: &Shared) -> rquickjs::Result<Object<'js>> {
    let set = Object::new(cx.clone())?;

    let s = Rc::clone(shared);
    set.set(
        "removeAllExcept",
        Function::new(cx.clone(), move |cx: Ctx<'js>, names: Value<'js>| -> rquickjs::Result<()> {
            let names: Vec<String> = match names.as_array() {
                Some(array) => {
                    array.iter::<Coerced<String>>().map(|n| n.map(|c| c.0)).collect::<rquickjs::Result<_>>()?
                }
                None => vec![Coerced::<String>::from_js(&cx, names)?.0],
            };
            let mut st = state(&cx, &s)?;
            let step = format!("{} (destinationSet.removeAllExcept)", st.step);
            st.outcome.keep_only(names.iter().map(String::as_str), &step);
            Ok(())
        })?,
    )?;

    let s = Rc::clone(shared);
    set.set(
        "remove",
        Function::new(cx.clone(), move |cx: Ctx<'js>, name: Coerced<String>| -> rquickjs::Result<()> {
            let mut st = state(&cx, &s)?;
            let step = format!("{} (destinationSet.remove)", st.step);
            st.outcome.remove(&name.0, &step);
            Ok(())
        })?,
    )?;

    let s = Rc::clone(shared);
    set.set(
        "removeAll",
        Function::new(cx.clone(), move |cx: Ctx<'js>| -> rquickjs::Result<()> {
            let mut st = state(&cx, &s)?;
            let step = format!("{} (destinationSet.removeAll)", st.step);
            st.outcome.remove_all(&step);
            Ok(())
        })?,
    )?;
    Ok(set)
}

fn logger_object<'js>(cx: &Ctx<'js>, shared: &Shared) -> rquickjs::Result<Object<'js>> {
    let logger = Object::new(cx.clone())?;
    for level in ["debug", "info", "warn", "error"] {
        let s = Rc::clone(shared);
        logger.set(
            level,
            Function::new(cx.clone(), move |cx: Ctx<'js>, text: Opt<Value<'js>>| -> rquickjs::Result<()> {
                let text = text_of(&cx, text)?;
                let st = state(&cx, &s)?;
                // Always debug: scripts log field values, and patient data
                // must not reach the log at info or above.
                tracing::debug!(
                    target: "plexus::script",
                    channel = %st.channel,
                    message_id = %st.message_id,
                    step = %st.step,
                    level,
                    "{}",
                    truncate(&text)
                );
                Ok(())
            })?,
        )?;
    }
    Ok(logger)
}
