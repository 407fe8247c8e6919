//! The WebSocket round trip both load generators time.

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// Sends `payload` as one binary message and waits for its echo, which must be identical;
/// pings and pongs on the way are skipped (tungstenite answers pings itself).
pub async fn round_trip<S>(ws: &mut WebSocketStream<S>, payload: &Bytes) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::Binary(payload.clone())).await?;
    let echo = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(echo))) => break echo,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended mid-run"),
        }
    };
    if echo != *payload {
        bail!("echo differs from what was sent");
    }
    Ok(())
}
