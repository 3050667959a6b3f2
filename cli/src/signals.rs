//! `domicile signals decode | encode`: what an IAB TCF or GPP string says, for legal and web
//! teams, and a string built from a JSON model (`domicile_signals`). Errors name the segment or
//! section and the bit offset, never the string.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum SignalsCommand {
    /// Decode and validate a TC string (`--tcf`) or a GPP string (`--gpp`); `-` reads it from
    /// stdin (strings in arguments are visible to other users of the machine).
    Decode {
        #[command(flatten)]
        input: Which,
        /// `human` (default) or `json` (TCF fields `version`, `cmp_id`, `purposes_consent`, …;
        /// GPP `sections`, each with `id`, `name` and its fields, and `us_signals`).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// TCF: check the structure only (accept withdrawn policy versions and a v2.3 string
        /// without disclosed vendors, flagged in the output).
        #[arg(long)]
        lenient: bool,
    },
    /// Encode a JSON model (as `decode --format json` prints it) from a file or `-` (stdin) into
    /// a TC string (`--tcf FILE`) or GPP string (`--gpp FILE`).
    Encode {
        #[command(flatten)]
        input: Which,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    #[arg(long)]
    tcf: Option<String>,
    #[arg(long)]
    gpp: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// `-`: stdin, else the value itself.
fn text_or_stdin(value: &str) -> std::io::Result<String> {
    if value != "-" {
        return Ok(value.to_owned());
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    Ok(text.trim().to_owned())
}

/// `-`: stdin, else the file.
fn file_or_stdin(value: &str) -> std::io::Result<String> {
    if value == "-" {
        return text_or_stdin(value);
    }
    std::fs::read_to_string(PathBuf::from(value))
}

pub fn run(command: SignalsCommand) -> ExitCode {
    match command {
        SignalsCommand::Decode { input, format, lenient } => decode(&input, format, lenient),
        SignalsCommand::Encode { input } => encode(&input),
    }
}

fn fail(message: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn decode(input: &Which, format: Format, lenient: bool) -> ExitCode {
    let value = match (&input.tcf, &input.gpp) {
        (Some(tcf), _) => {
            let text = match text_or_stdin(tcf) {
                Ok(text) => text,
                Err(e) => return fail(format!("cannot read the string: {e}"), 2),
            };
            let decoded = if lenient {
                domicile_signals::tcf::decode_lenient(&text)
            } else {
                domicile_signals::tcf::decode(&text)
            };
            match decoded {
                Ok(model) => {
                    let mut value = serde_json::to_value(&model).unwrap_or_default();
                    if lenient && let Err(e) = model.check_policy() {
                        value["policy_problem"] = serde_json::Value::String(e.to_string());
                    }
                    value
                }
                Err(e) => return fail(format!("not a valid TC string: {e}"), 1),
            }
        }
        (None, Some(gpp)) => {
            let text = match text_or_stdin(gpp) {
                Ok(text) => text,
                Err(e) => return fail(format!("cannot read the string: {e}"), 2),
            };
            match domicile_signals::gpp::decode(&text) {
                Ok(decoded) => {
                    let mut value = serde_json::to_value(&decoded).unwrap_or_default();
                    value["us_signals"] = serde_json::to_value(decoded.us_signals()).unwrap_or_default();
                    value
                }
                Err(e) => return fail(format!("not a valid GPP string: {e}"), 1),
            }
        }
        (None, None) => return fail("give --tcf or --gpp", 64),
    };
    match format {
        Format::Json => println!("{value}"),
        Format::Human => {
            let mut out = String::new();
            human(&value, 0, &mut out);
            print!("{out}");
        }
    }
    ExitCode::SUCCESS
}

fn encode(input: &Which) -> ExitCode {
    let (which, source) = match (&input.tcf, &input.gpp) {
        (Some(path), _) => ("tcf", path),
        (None, Some(path)) => ("gpp", path),
        (None, None) => return fail("give --tcf FILE or --gpp FILE", 64),
    };
    let text = match file_or_stdin(source) {
        Ok(text) => text,
        Err(e) => return fail(format!("cannot read {source}: {e}"), 2),
    };
    let encoded = if which == "tcf" {
        // `policy_problem` is what a lenient decode adds: not part of the model.
        serde_json::from_str::<serde_json::Value>(&text)
            .map(|mut value| {
                if let Some(map) = value.as_object_mut() {
                    map.remove("policy_problem");
                }
                value
            })
            .and_then(serde_json::from_value)
            .map_err(|e| format!("not a TC model: {e}"))
            .and_then(|model| domicile_signals::tcf::encode(&model).map_err(|e| e.to_string()))
    } else {
        // `us_signals` is derived from the sections (`decode` adds it): not part of the model.
        serde_json::from_str::<serde_json::Value>(&text)
            .map(|mut value| {
                if let Some(map) = value.as_object_mut() {
                    map.remove("us_signals");
                }
                value
            })
            .and_then(serde_json::from_value)
            .map_err(|e| format!("not a GPP model: {e}"))
            .and_then(|model| domicile_signals::gpp::encode(&model).map_err(|e| e.to_string()))
    };
    match encoded {
        Ok(string) => {
            println!("{string}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e, 1),
    }
}

/// Longest list of ids printed in full; longer ones are summarised with their count.
const LIST_SHOWN: usize = 24;

/// A readable, indented rendering of a decoded model.
fn human(value: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value;
    let pad = "  ".repeat(indent);
    let Value::Object(map) = value else { return };
    for (key, value) in map {
        let label = key.replace('_', " ");
        match value {
            Value::Array(items) if items.iter().all(|i| !i.is_object()) => {
                let shown: Vec<String> = items.iter().take(LIST_SHOWN).map(scalar).collect();
                let more =
                    if items.len() > LIST_SHOWN { format!(" … ({} in all)", items.len()) } else { String::new() };
                let list = if items.is_empty() { "none".to_owned() } else { shown.join(", ") };
                out.push_str(&format!("{pad}{label}: {list}{more}\n"));
            }
            Value::Array(items) => {
                out.push_str(&format!("{pad}{label}:\n"));
                for item in items {
                    let title = item.get("name").map(scalar).unwrap_or_default();
                    out.push_str(&format!("{pad}  - {title}\n"));
                    human(item, indent + 2, out);
                }
            }
            Value::Object(_) => {
                out.push_str(&format!("{pad}{label}:\n"));
                human(value, indent + 1, out);
            }
            // TCF times are deciseconds since the epoch, as in the string.
            Value::Number(n) if key == "created" || key == "last_updated" => {
                let when = n
                    .as_i64()
                    .and_then(|ds| jiff::Timestamp::from_second(ds / 10).ok())
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default();
                out.push_str(&format!("{pad}{label}: {n}{when}\n"));
            }
            other => out.push_str(&format!("{pad}{label}: {}\n", scalar(other))),
        }
    }
}

fn scalar(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "none".to_owned(),
        other => other.to_string(),
    }
}
