//! `chatd token USER`: mints a token that lets USER connect.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use argh::FromArgs;

use crate::chat::auth::{DEFAULT_MAX_TTL, TokenKey};
use crate::chat::names::valid_user_name;
use crate::datadir;
use crate::duration::{format_duration, parse_duration};

/// How long a token stays valid unless `--ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Print a token that lets USER connect.
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "token")]
pub struct TokenCommand {
    /// the user the token is for
    #[argh(positional)]
    pub user: String,

    /// how long the token stays valid, e.g. 30m, 12h, 30d (default 24h)
    #[argh(option, default = "DEFAULT_TTL", from_str_fn(parse_duration))]
    pub ttl: Duration,

    /// the longest --ttl allowed: the server's --max-token-ttl (default 30d)
    #[argh(option, default = "DEFAULT_MAX_TTL", from_str_fn(parse_duration))]
    pub max_token_ttl: Duration,

    /// the data directory (default: the same one `chatd run` uses)
    #[argh(option)]
    pub data_dir: Option<PathBuf>,

    /// the secret file to sign with (default: jwt-secret in the data directory)
    #[argh(option)]
    pub jwt_secret: Option<PathBuf>,
}

impl TokenCommand {
    /// Prints the token and a newline on stdout.
    pub fn execute(self) -> anyhow::Result<()> {
        println!("{}", self.mint()?);
        Ok(())
    }

    /// The token, without printing it.
    fn mint(self) -> anyhow::Result<String> {
        if self.ttl > self.max_token_ttl {
            bail!(
                "--ttl {} is longer than the {} a server accepts (chatd run --max-token-ttl): \
                 pass a shorter --ttl, or, if the server runs with a larger --max-token-ttl, \
                 pass the same --max-token-ttl here",
                format_duration(self.ttl),
                format_duration(self.max_token_ttl)
            );
        }
        mint_token(
            &self.user,
            self.ttl,
            self.data_dir.as_deref(),
            self.jwt_secret.as_deref(),
        )
    }
}

/// Mints a token for `user`, valid for `ttl`, signed with the secret the
/// server on this host uses: `jwt_secret` if given, else the one in the data
/// directory (`data_dir`, resolved as every command does). Whether `ttl` is
/// more than the server accepts is the caller's to check.
pub fn mint_token(
    user: &str,
    ttl: Duration,
    data_dir: Option<&Path>,
    jwt_secret: Option<&Path>,
) -> anyhow::Result<String> {
    if !valid_user_name(user) {
        bail!(
            "invalid user name {user:?}: use 1 to 32 characters of A-Z a-z 0-9 . -, \
             starting with a letter or digit"
        );
    }
    if ttl.is_zero() {
        bail!("--ttl must be longer than 0s");
    }
    let secret = match jwt_secret {
        // The operator's own secret must already exist: creating it here
        // would mint tokens the server does not know about.
        Some(path) => datadir::load_secret(path)?,
        // Created if missing, so a token minted before the first
        // `chatd run` works once the server starts on this directory.
        None => {
            let dir = datadir::resolve(data_dir);
            datadir::ensure(&dir)?;
            datadir::load_or_create_secret(&dir.join(datadir::SECRET_FILE))?
        }
    };
    TokenKey::new(&secret, ttl)
        .issue(user, ttl)
        .with_context(|| format!("cannot issue a token for {user}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argh::FromArgs;

    fn parse(args: &[&str]) -> Result<TokenCommand, String> {
        TokenCommand::from_args(&["token"], args).map_err(|e| e.output)
    }

    #[test]
    fn parses_defaults_and_options() {
        let cmd = parse(&["Dummy-1"]).unwrap();
        assert_eq!(cmd.ttl, Duration::from_secs(86_400));
        assert_eq!(cmd.data_dir, None);
        let cmd = parse(&["Dummy-1", "--ttl", "1h30m", "--data-dir", "/d"]).unwrap();
        assert_eq!(cmd.ttl, Duration::from_secs(5400));
        assert_eq!(cmd.data_dir, Some(PathBuf::from("/d")));
        let err = parse(&["Dummy-1", "--ttl", "90"]).unwrap_err();
        assert!(err.contains("12h"), "{err}");
    }

    #[test]
    fn mints_with_a_new_secret_in_the_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let cmd = parse(&["Dummy-1", "--data-dir", dir.to_str().unwrap()]).unwrap();
        let token = cmd.mint().unwrap();
        let secret = datadir::load_secret(&dir.join(datadir::SECRET_FILE)).unwrap();
        let key = TokenKey::new(&secret, DEFAULT_MAX_TTL);
        assert_eq!(key.verify(&token, "Dummy-1"), Ok(()));
    }

    #[test]
    fn explicit_secret_must_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("secret");
        let args = ["Dummy-1", "--jwt-secret", path.to_str().unwrap()];
        let err = format!("{:#}", parse(&args).unwrap().mint().unwrap_err());
        assert!(err.contains("secret"), "{err}");
        assert!(!path.exists());

        std::fs::write(&path, "a secret of at least thirty-two bytes\n").unwrap();
        let token = parse(&args).unwrap().mint().unwrap();
        let key = TokenKey::new(b"a secret of at least thirty-two bytes", DEFAULT_MAX_TTL);
        assert_eq!(key.verify(&token, "Dummy-1"), Ok(()));

        std::fs::write(&path, "s3cret\n").unwrap();
        let err = format!("{:#}", parse(&args).unwrap().mint().unwrap_err());
        assert!(err.contains("at least 32 bytes"), "{err}");
    }

    #[test]
    fn refuses_a_ttl_past_the_maximum_naming_the_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_str().unwrap();
        let err = format!(
            "{:#}",
            parse(&["Dummy-1", "--ttl", "36500d", "--data-dir", dir])
                .unwrap()
                .mint()
                .unwrap_err()
        );
        assert!(
            err.contains("--max-token-ttl") && err.contains("--ttl"),
            "{err}"
        );
        let longer = [
            "Dummy-1",
            "--ttl",
            "60d",
            "--max-token-ttl",
            "90d",
            "--data-dir",
            dir,
        ];
        assert!(parse(&longer).unwrap().mint().is_ok());
    }

    #[test]
    fn refuses_bad_user_and_zero_ttl() {
        let err = format!("{:#}", parse(&["a_b"]).unwrap().mint().unwrap_err());
        assert!(err.contains("invalid user name"), "{err}");
        let cmd = parse(&["Dummy-1", "--ttl", "0s"]).unwrap();
        assert!(format!("{:#}", cmd.mint().unwrap_err()).contains("--ttl"));
    }
}
