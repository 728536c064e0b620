//! Raw HTTP/1 on a socket the test holds, for tests about connections themselves (keep-alive,
//! limits, timeouts, certificates per connection). Needs only tokio, so test crates that do not
//! use the fake registry include it by path.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Sends one keep-alive `GET /v2/` with `Host: host` on `s` and returns its response head (the
/// answer to `/v2/` has an empty body, so the connection is ready for the next request).
pub async fn keep_alive_get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, host: &str) -> String {
    s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}
