//! From a `provider:model` string to a provider.

use std::sync::Arc;

use crate::{
    anthropic::{ANTHROPIC_BASE_URL, AnthropicProvider},
    error::{Error, Result},
    gemini::{GEMINI_BASE_URL, GeminiProvider},
    http::HttpProviderConfig,
    openai::{OPENAI_BASE_URL, OpenAiProvider},
    provider::ModelProvider,
    scripted::ScriptedProvider,
};

/// Builds the provider for a full model string such as `openai:gpt-4o`.
/// The worker calls it once per run; an error fails the run before it
/// starts.
pub type ProviderFactory =
    Arc<dyn Fn(&str) -> Result<Arc<dyn ModelProvider>> + Send + Sync + 'static>;

/// Ollama's OpenAI-compatible endpoint on its default port.
pub const OLLAMA_BASE_URL: &str = "http://localhost:11434/v1";

/// vLLM's OpenAI-compatible endpoint on its default port.
pub const VLLM_BASE_URL: &str = "http://localhost:8000/v1";

/// The providers [`resolve_provider`] knows.
pub const PROVIDERS: &[&str] = &[
    "openai",
    "ollama",
    "vllm",
    "anthropic",
    "gemini",
    "scripted",
    "mock",
];

/// Splits a model string at the first colon into provider and model; a
/// bare name means openai (`gpt-4o` is `("openai", "gpt-4o")`).
pub fn split_model(model: &str) -> (&str, &str) {
    match model.split_once(':') {
        Some((provider, name)) => (provider.trim(), name),
        None => ("openai", model),
    }
}

/// A model string short enough for a log or usage line: an inline scripted
/// script becomes `scripted:inline`, a script file its file name, and any
/// other string longer than [`SHORT_MODEL_NAME_MAX`] characters is cut
/// there with `…`.
///
/// ```
/// use exo_models::short_model_name;
///
/// assert_eq!(short_model_name("anthropic:claude-sonnet-4-5"), "anthropic:claude-sonnet-4-5");
/// assert_eq!(short_model_name(r#"scripted:{"turns":[]}"#), "scripted:inline");
/// ```
pub fn short_model_name(model: &str) -> String {
    let (provider, name) = split_model(model);
    let name = name.trim();
    if matches!(provider, "scripted" | "mock") && model.contains(':') {
        if name.starts_with('{') || name.starts_with('[') {
            return format!("{provider}:inline");
        }
        let path = name.strip_prefix("file=").unwrap_or(name);
        if path.contains('/') || path.ends_with(".json") {
            let file = path.rsplit('/').next().unwrap_or(path);
            return format!("{provider}:{file}");
        }
    }
    if model.chars().count() <= SHORT_MODEL_NAME_MAX {
        return model.to_owned();
    }
    let mut short: String = model.chars().take(SHORT_MODEL_NAME_MAX - 1).collect();
    short.push('…');
    short
}

/// The longest model name [`short_model_name`] leaves as it is.
pub const SHORT_MODEL_NAME_MAX: usize = 48;

/// Builds a provider from a model string and the process environment (see
/// the crate docs for the variables each provider reads).
pub fn resolve_provider(model: &str) -> Result<Arc<dyn ModelProvider>> {
    resolve_provider_with_env(model, &|name| {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    })
}

/// [`resolve_provider`] with the environment given as a lookup function,
/// so that callers (and tests) need not change the process environment.
pub fn resolve_provider_with_env(
    model: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn ModelProvider>> {
    let (provider, name) = split_model(model);
    let require_name = || {
        if name.trim().is_empty() {
            Err(Error::Config(format!(
                "model string `{model}` names no model after `{provider}:`"
            )))
        } else {
            Ok(name.trim().to_owned())
        }
    };
    let openai_compatible = |base_variable: &str, default_base: &str, key_variable: &str| {
        let base_url = env(base_variable).unwrap_or_else(|| default_base.to_owned());
        let config = HttpProviderConfig::new(require_name()?, base_url, env(key_variable));
        Ok::<_, Error>(Arc::new(OpenAiProvider::new(config)) as Arc<dyn ModelProvider>)
    };
    match provider {
        "openai" => {
            let base_url = env("OPENAI_BASE_URL");
            let api_key = env("OPENAI_API_KEY");
            if base_url.is_none() && api_key.is_none() {
                return Err(Error::Config(format!(
                    "model `{model}` needs OPENAI_API_KEY (or OPENAI_BASE_URL for an \
                     OpenAI-compatible server that needs no key)"
                )));
            }
            let config = HttpProviderConfig::openai(require_name()?, api_key)
                .with_base_url(base_url.unwrap_or_else(|| OPENAI_BASE_URL.to_owned()));
            Ok(Arc::new(OpenAiProvider::new(config)))
        }
        "ollama" => openai_compatible("OLLAMA_BASE_URL", OLLAMA_BASE_URL, "OLLAMA_API_KEY"),
        "vllm" => openai_compatible("VLLM_BASE_URL", VLLM_BASE_URL, "VLLM_API_KEY"),
        "anthropic" => {
            let api_key = env("ANTHROPIC_API_KEY")
                .ok_or_else(|| Error::Config(format!("model `{model}` needs ANTHROPIC_API_KEY")))?;
            let config = HttpProviderConfig::anthropic(require_name()?, api_key).with_base_url(
                env("ANTHROPIC_BASE_URL").unwrap_or_else(|| ANTHROPIC_BASE_URL.to_owned()),
            );
            Ok(Arc::new(AnthropicProvider::new(config)))
        }
        "gemini" | "google" => {
            let api_key = env("GEMINI_API_KEY")
                .or_else(|| env("GOOGLE_API_KEY"))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "model `{model}` needs GEMINI_API_KEY (or GOOGLE_API_KEY)"
                    ))
                })?;
            let config = HttpProviderConfig::gemini(require_name()?, api_key).with_base_url(
                env("GEMINI_BASE_URL").unwrap_or_else(|| GEMINI_BASE_URL.to_owned()),
            );
            Ok(Arc::new(GeminiProvider::new(config)))
        }
        "scripted" | "mock" => Ok(Arc::new(ScriptedProvider::from_spec(name)?)),
        other => Err(Error::Config(format!(
            "unknown model provider `{other}` in `{model}` (known: {})",
            PROVIDERS.join(", ")
        ))),
    }
}

/// The factory that builds providers from the process environment.
pub fn default_factory() -> ProviderFactory {
    Arc::new(resolve_provider)
}

/// A factory that answers every model string with the same provider.
pub fn fixed_factory(provider: Arc<dyn ModelProvider>) -> ProviderFactory {
    Arc::new(move |_model: &str| Ok(Arc::clone(&provider)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_model_names() {
        let long = format!("openai:{}", "x".repeat(60));
        let cut = format!("openai:{}…", "x".repeat(40));
        let cases = [
            ("gpt-4o", "gpt-4o"),
            ("anthropic:claude-sonnet-4-5", "anthropic:claude-sonnet-4-5"),
            (r#"scripted:{"turns":[{"text":["hi"]}]}"#, "scripted:inline"),
            ("scripted: [ ]", "scripted:inline"),
            ("scripted:weather", "scripted:weather"),
            ("scripted:slow:200", "scripted:slow:200"),
            ("mock:file=/srv/scripts/demo.json", "mock:demo.json"),
            ("scripted:./turns.json", "scripted:turns.json"),
            (long.as_str(), cut.as_str()),
        ];
        for (model, expected) in cases {
            assert_eq!(short_model_name(model), expected, "{model}");
        }
    }

    fn check(model: &str, env: &[(&str, &str)], expected: &str) {
        let lookup = |name: &str| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        };
        let actual = match resolve_provider_with_env(model, &lookup) {
            Ok(provider) => format!("{}:{} {provider:?}", provider.name(), provider.model()),
            Err(error) => format!("error: {error}"),
        };
        assert!(
            actual.starts_with(expected) || actual.contains(expected),
            "{model}: expected `{expected}` in `{actual}`"
        );
    }

    #[test]
    fn model_strings_resolve() {
        check("gpt-4o", &[("OPENAI_API_KEY", "k")], "openai:gpt-4o");
        check(
            "openai:gpt-4o",
            &[("OPENAI_API_KEY", "k")],
            "https://api.openai.com/v1",
        );
        check(
            "openai:gpt-4o",
            &[],
            "error: model `openai:gpt-4o` needs OPENAI_API_KEY",
        );
        check(
            "openai:local",
            &[("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")],
            "http://127.0.0.1:9/v1",
        );
        check("ollama:llama3.2", &[], "http://localhost:11434/v1");
        check(
            "ollama:llama3.2",
            &[("OLLAMA_BASE_URL", "http://gpu:11434/v1")],
            "http://gpu:11434/v1",
        );
        check("vllm:qwen", &[], "http://localhost:8000/v1");
        check("vllm:org/model:tag", &[], "openai:org/model:tag");
        check(
            "anthropic:claude-sonnet-4-5",
            &[("ANTHROPIC_API_KEY", "k")],
            "anthropic:claude-sonnet-4-5",
        );
        check(
            "anthropic:claude",
            &[],
            "error: model `anthropic:claude` needs ANTHROPIC_API_KEY",
        );
        check(
            "gemini:gemini-2.5-flash",
            &[("GEMINI_API_KEY", "k")],
            "gemini:gemini-2.5-flash",
        );
        check("scripted:weather", &[], "scripted:weather");
        check("mock:echo", &[], "scripted:echo");
        check("scripted:slow:250", &[], "scripted:slow:250");
        check(
            "scripted:bogus",
            &[],
            "error: unknown scripted model `bogus`",
        );
        check("bedrock:x", &[], "error: unknown model provider `bedrock`");
        check(
            "ollama:",
            &[],
            "error: model string `ollama:` names no model",
        );
    }

    #[test]
    fn split_at_the_first_colon() {
        assert_eq!(split_model("gpt-4o"), ("openai", "gpt-4o"));
        assert_eq!(split_model("ollama:llama3:8b"), ("ollama", "llama3:8b"));
        assert_eq!(
            split_model(r#"scripted:{"turns":[]}"#),
            ("scripted", r#"{"turns":[]}"#)
        );
    }
}
