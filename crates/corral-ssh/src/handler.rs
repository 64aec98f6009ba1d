//! One SSH connection: authentication by token and the session channels it may open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use russh::Channel;
use russh::ChannelId;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use tokio::net::TcpStream;

use crate::{Gateway, Refused, channel};

/// Serves one connection until it ends (or fails to authenticate in time).
pub async fn connection(gw: Gateway, socket: TcpStream, peer: SocketAddr) {
    let authed = Arc::new(AtomicBool::new(false));
    let handler = Handler {
        gw: gw.clone(),
        token: None,
        channels: 0,
        authed: authed.clone(),
    };
    let deadline = gw.settings.auth_timeout;
    let session = match tokio::time::timeout(
        deadline,
        russh::server::run_stream(gw.config.clone(), socket, handler),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "ssh handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "ssh handshake timed out");
            return;
        }
    };
    let handle = session.handle();
    let watchdog = async {
        tokio::time::sleep(deadline).await;
        if authed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = session => if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "ssh connection ended");
        },
        () = watchdog => {
            tracing::info!(%peer, "ssh connection closed: no authentication in time");
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "authentication timed out".into(),
                    String::new(),
                )
                .await;
        }
    }
}

struct Handler {
    gw: Gateway,
    /// The token the client authenticated with.
    token: Option<String>,
    channels: usize,
    authed: Arc<AtomicBool>,
}

impl russh::server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        match self.gw.gate.open(user).await {
            // A token that is good but cannot open a session now is told so in the session.
            Ok(_) | Err(Refused::Unavailable(_)) => {
                self.token = Some(user.to_owned());
                self.authed.store(true, Ordering::SeqCst);
                Ok(Auth::Accept)
            }
            Err(Refused::Invalid) => {
                tracing::info!("ssh authentication refused: invalid or expired token");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(token) = self.token.clone() else {
            return Ok(());
        };
        if self.channels >= self.gw.settings.max_channels {
            tracing::info!("ssh channel refused: too many channels on one connection");
            return Ok(());
        }
        self.channels += 1;
        reply.accept().await;
        tokio::spawn(channel::run(self.gw.clone(), token, channel));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if channel::accepts_env(name) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only `sftp` (the channel task starts it); others fail the request at once.
        if channel::serves_subsystem(name) {
            session.channel_success(channel)
        } else {
            tracing::info!(subsystem = name, "ssh subsystem refused");
            session.channel_failure(channel)
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}
