"""Reading configuration from the environment, shared by every process's config.py.

Problems are collected rather than raised one at a time, so a bad deployment
hears about every missing or malformed variable in one start-up message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit


class ConfigError(Exception):
    """One or more environment variables are missing or malformed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("configuration error: " + "; ".join(problems))
        self.problems = problems


class Environment:
    """A view of environment variables that records problems instead of raising."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self.problems: list[str] = []

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or default

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name} must be a whole number, got {raw!r}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and at most {maximum}"
            self.problems.append(f"{name} must be at least {minimum}{upper}, got {value}")
            return default
        return value

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        value = (self.text(name) or default).lower()
        if value not in options:
            self.problems.append(f"{name} must be one of {', '.join(options)}, got {value!r}")
            return default
        return value

    def url(self, name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
        value = self.text(name, default)
        if value is not None and not value.startswith(tuple(f"{s}://" for s in schemes)):
            # The value may carry credentials: name the variable, never echo it.
            self.problems.append(f"{name} must start with {' or '.join(s + '://' for s in schemes)}")
        return value

    def url_with_password(
        self, name: str, default: str | None, schemes: tuple[str, ...], *, password: str, decoded: bool = True
    ) -> str | None:
        """`name`'s URL with the password `password` (or `password_FILE`) put in it.

        The URL names the user (`scheme://USER@host/...`) and the secret stays in a
        file. `decoded=False` is for clients that read the URL's password as written
        (nats-py): such a password must need no percent-encoding.
        """
        url = self.url(name, default, schemes)
        secret = self.secret(password, required=False)
        if not url or not secret:
            return url
        return self._with_password(url, name, password, secret, decoded)

    def url_list_with_password(
        self, name: str, default: str | None, schemes: tuple[str, ...], *, password: str, decoded: bool = True
    ) -> str | None:
        """`url_list`, with the password `password` (or `password_FILE`) put in each URL:
        every member of a cluster takes the same user."""
        value = self.url_list(name, default, schemes)
        secret = self.secret(password, required=False)
        if not value or not secret:
            return value
        problems = len(self.problems)
        urls = [self._with_password(url, name, password, secret, decoded) for url in value.split(",")]
        del self.problems[problems + 1 :]  # one problem said once, not once per member
        return ",".join(urls)

    def _with_password(self, url: str, name: str, password: str, secret: str, decoded: bool) -> str:
        userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
        if not at:
            self.problems.append(f"{password} needs a user name in {name} (scheme://USER@host)")
            return url
        if ":" in userinfo:
            self.problems.append(f"set the password in {name} or in {password}, not both")
            return url
        encoded = quote(secret, safe="")
        if not decoded and encoded != secret:
            self.problems.append(f"{password} may hold only A-Z, a-z, 0-9 and . _ ~ -")
            return url
        scheme_end = url.index("://") + 3
        return f"{url[:scheme_end]}{userinfo}:{encoded}@{url[scheme_end + len(userinfo) + 1 :]}"

    def url_list(self, name: str, default: str | None, schemes: tuple[str, ...]) -> str | None:
        """A comma-separated list of URLs (the members of a cluster), each with a scheme.

        Returned as written, with the blanks around commas dropped; `split_urls` splits it.
        """
        value = self.text(name, default)
        if value is None:
            return None
        urls = [url.strip() for url in value.split(",")]
        prefixes = tuple(f"{s}://" for s in schemes)
        if any(not url.startswith(prefixes) for url in urls):
            # The value may carry credentials: name the variable and the position, never echo it.
            bad = ", ".join(str(i + 1) for i, url in enumerate(urls) if not url.startswith(prefixes))
            self.problems.append(
                f"{name} must be a comma-separated list of URLs each starting with "
                f"{' or '.join(prefixes)} (not so: entry {bad})"
            )
        return ",".join(urls)

    def secret(self, name: str, *, required: bool) -> str | None:
        """`NAME`, or the contents of the file named by `NAME_FILE` (never both)."""
        direct = self.text(name)
        file_name = self.text(f"{name}_FILE")
        if direct and file_name:
            self.problems.append(f"set {name} or {name}_FILE, not both")
            return None
        if file_name:
            try:
                direct = Path(file_name).read_text(encoding="utf-8").strip()
            except OSError as exc:
                self.problems.append(f"{name}_FILE cannot be read: {exc.strerror}")
                return None
            if not direct:
                self.problems.append(f"{name}_FILE names an empty file")
                return None
        if required and not direct:
            self.problems.append(f"{name} (or {name}_FILE) is required")
        return direct

    def check(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)
