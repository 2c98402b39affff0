"""Provider sandbox: Telegram and Mailgun speaking their real wire protocols on loopback."""
