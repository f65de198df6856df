//! The one-shot commands for scripts: `send`, `whisper`, `rename`, `who`.
//!
//! Each connects, claims `--name` if given, does one thing, waits for the
//! server to confirm it, and closes the connection politely (so nothing
//! sent is lost in a reset). The whole command runs within `--timeout`;
//! with `-` (messages from stdin) the limit applies to each line instead,
//! because a slow producer (a build) is not the server being slow.

use crate::client::{Client, ClientError};
use crate::protocol::visible;

use super::{claim, connect, input, output, within, Args, CliError, CLOSE_WAIT};

/// `send` (to everyone, `to` = `None`) and `whisper` (to `to`). The words
/// of `message` are joined with spaces; `["-"]` means stdin, one message per
/// line, blank lines skipped. Stops at the first refused message.
pub async fn send(args: &Args, to: Option<&str>, message: &[String]) -> Result<(), CliError> {
    if message.len() == 1 && message[0] == "-" {
        return send_stdin(args, to).await;
    }
    let text = message.join(" ");
    within(args.timeout, async {
        let mut client = connect(args).await?;
        // One-shot commands never read other users' lines: keep none.
        client.ignore_events();
        deliver(&mut client, to, &text).await?;
        client.close(CLOSE_WAIT).await;
        Ok(())
    })
    .await?;
    Ok(())
}

/// `send -` and `whisper NAME -`.
async fn send_stdin(args: &Args, to: Option<&str>) -> Result<(), CliError> {
    // Connect first, so a wrong address fails at once, not after the input.
    let mut client = connect(args).await?;
    // One-shot commands never read other users' lines: keep none.
    client.ignore_events();
    let mut lines = input::stdin_lines();
    while let Some(line) = lines.recv().await {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        within(args.timeout, deliver(&mut client, to, &line)).await?;
    }
    client.close(CLOSE_WAIT).await;
    Ok(())
}

/// Sends one message and waits for the server's confirmation.
async fn deliver(client: &mut Client, to: Option<&str>, text: &str) -> Result<(), ClientError> {
    match to {
        None => client.say(text).await,
        Some(to) => client.whisper(to, text).await,
    }
}

/// `rename NAME`: prints `you are now NAME` on success.
pub async fn rename(args: &Args, name: &str) -> Result<(), CliError> {
    let new = within(args.timeout, async {
        let mut client = connect(args).await?;
        // One-shot commands never read other users' lines: keep none.
        client.ignore_events();
        claim(&mut client, name).await?;
        let new = client.name().to_string();
        client.close(CLOSE_WAIT).await;
        Ok(new)
    })
    .await?;
    output::line(&format!("you are now {}", visible(&new)))?;
    Ok(())
}

/// `who`: one name per line, or a JSON array with `--json`, sorted. The
/// connection imc opened to ask is left out.
pub async fn who(args: &Args, json: bool) -> Result<(), CliError> {
    let names = within(args.timeout, async {
        let mut client = connect(args).await?;
        // One-shot commands never read other users' lines: keep none.
        client.ignore_events();
        let mut names = client.who().await?;
        // Our own connection exists only to ask; it is not "online".
        names.retain(|n| n != client.name());
        client.close(CLOSE_WAIT).await;
        Ok(names)
    })
    .await?;
    let names: Vec<String> = names.iter().map(|n| visible(n).into_owned()).collect();
    if json {
        output::line(&serde_json::to_string(&names).unwrap_or_default())?;
    } else {
        for name in &names {
            output::line(name)?;
        }
    }
    Ok(())
}
