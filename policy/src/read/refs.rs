//! Named definitions and the references rules make to them. Obligations, lifetimes, windows and
//! registers share one namespace per pack; a reference a file does not define is an error unless
//! the pack extends another, in which case it is left for `compile` to resolve against the packs
//! extended (lexically: from the rule's own pack outwards).

use std::collections::BTreeMap;

use super::document::Span;
use crate::diag::Sink;
use crate::model::decision::BUILTIN_OBLIGATIONS;
use crate::model::rule::Minors;
use crate::model::{CallingWindow, Lifetime, Obligation, Register};

/// What a rule refers to by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefKind {
    Obligation,
    Lifetime,
    Window,
    Register,
    Minors,
    Replaces,
}

impl RefKind {
    pub(crate) fn undefined(self) -> &'static str {
        match self {
            RefKind::Obligation => "undefined obligation; define it under [obligations]",
            RefKind::Lifetime => "undefined lifetime; define it under [lifetimes]",
            RefKind::Window => "undefined calling window; define it under [windows]",
            RefKind::Register => "undefined register; define it under [registers]",
            RefKind::Minors => "undefined minors definition; define it under [minors]",
            RefKind::Replaces => "`replaces` names no rule of an extended pack",
        }
    }
}

/// The named definitions one file states, each with the span of its id.
pub(crate) struct Definitions {
    pub(crate) obligations: Vec<(Obligation, Span)>,
    pub(crate) lifetimes: Vec<(Lifetime, Span)>,
    pub(crate) windows: Vec<(CallingWindow, Span)>,
    pub(crate) registers: Vec<(Register, Span)>,
    pub(crate) minors: Vec<(Minors, Span)>,
}

impl Definitions {
    /// Whether this file defines `name` as a `kind` (rules, which `replaces` names, are not
    /// definitions).
    pub(crate) fn defines(&self, kind: RefKind, name: &str) -> bool {
        match kind {
            RefKind::Obligation => self.obligations.iter().any(|(o, _)| o.id == name),
            RefKind::Lifetime => self.lifetimes.iter().any(|(o, _)| o.id == name),
            RefKind::Window => self.windows.iter().any(|(o, _)| o.id == name),
            RefKind::Register => self.registers.iter().any(|(o, _)| o.id == name),
            RefKind::Minors => self.minors.iter().any(|(o, _)| o.id == name),
            RefKind::Replaces => false,
        }
    }

    /// One namespace: obligations, lifetimes, windows and registers are all named by id in rules
    /// and decisions, so an id may be defined only once per pack, and never as an id the engine
    /// attaches itself.
    pub(crate) fn check_names(&self, sink: &mut Sink<'_>) {
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let all_names = self
            .obligations
            .iter()
            .map(|(o, s)| (o.id.clone(), s.clone()))
            .chain(self.lifetimes.iter().map(|(o, s)| (o.id.clone(), s.clone())))
            .chain(self.windows.iter().map(|(o, s)| (o.id.clone(), s.clone())))
            .chain(self.registers.iter().map(|(o, s)| (o.id.clone(), s.clone())))
            .chain(self.minors.iter().map(|(o, s)| (o.id.clone(), s.clone())))
            .collect::<Vec<_>>();
        for (name, span) in all_names {
            let line = sink.line_of(&span);
            if BUILTIN_OBLIGATIONS.contains(&name.as_str()) {
                sink.error(&span, format!("`{name}` is a reserved obligation id"));
            } else if let Some(first) = names.get(&name) {
                sink.error(&span, format!("`{name}` is already defined at line {first}"));
            } else {
                names.insert(name, line);
            }
        }
    }
}

/// The references a file's rules make, resolved against its own definitions as they are read.
pub(crate) struct References<'d> {
    definitions: &'d Definitions,
    /// The file extends another pack, which may define what this one does not.
    extends: bool,
    /// Names resolved locally (for the "obligation is not used" warning).
    pub(crate) used: Vec<String>,
    /// References not defined in this file, to resolve against the packs it extends.
    pub(crate) unresolved: Vec<(RefKind, String, Span)>,
}

impl<'d> References<'d> {
    pub(crate) fn new(definitions: &'d Definitions, extends: bool) -> Self {
        Self { definitions, extends, used: Vec::new(), unresolved: Vec::new() }
    }

    pub(crate) fn extends(&self) -> bool {
        self.extends
    }

    /// A reference not defined here is an error, unless an extended pack may define it.
    pub(crate) fn resolve(&mut self, sink: &mut Sink<'_>, kind: RefKind, name: &str, span: &Span) {
        if self.definitions.defines(kind, name) {
            self.used.push(name.to_owned());
        } else if self.extends {
            self.unresolved.push((kind, name.to_owned(), span.clone()));
        } else {
            sink.error(span, kind.undefined());
        }
    }
}
