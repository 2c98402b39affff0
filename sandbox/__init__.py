"""Provider sandbox: all nine providers (Telegram, VK, Mailgun, SendGrid, SMSC, SMS.ru, Twilio,
360dialog, GREEN-API) speaking their real wire protocols on loopback; see ``sandbox.providers``."""
