"""The one exception hierarchy of airbundle.

Every error a user can meet derives from :class:`AirbundleError`, carries a
message that names the file, member, field or image at fault, and says what to
do about it in :meth:`AirbundleError.diagnostics`. The CLI catches the base
class in one place and exits with :attr:`AirbundleError.exit_code`.

Code that decides on an error looks at its class, or at the facts it carries
(:attr:`AirbundleError.status`, :attr:`AirbundleError.codes`,
:attr:`AirbundleError.member`, :attr:`AirbundleError.volumes`), never at its
message text: messages are for people and may change.

::

    AirbundleError                (exit 3 unless overridden)
    ├── UsageError            (exit 2) bad command-line input
    │   ├── SpecError         (exit 2) the spec file is invalid
    │   └── PolicyError       (exit 2) the image policy or one of its keys is invalid,
    │                             or asks for a check airbundle cannot make
    ├── IntegrityError        (exit 1) the bundle is not what it claims
    │   ├── SignatureError        no trusted signature, wrong key, bad signature
    │   ├── ManifestError         the signed manifest is malformed
    │   ├── ArchiveError          unsafe, unlisted, duplicate or missing member
    │   ├── MemberDigestError     a member's bytes do not match the manifest
    │   ├── TruncatedError        the bundle ends early
    │   ├── FreshnessError        authentic, but not now: wrong channel, expired,
    │   │                         rollback, reused sequence
    │   └── VettingError          an image refused: by the image policy, a vet command,
    │       │                     or for lacking the vetting evidence asked for
    │       └── SignatureCheckError  one upstream signature does not hold (a reason)
    ├── FormatError           (exit 2) a reference, digest or name is malformed
    │   ├── InvalidReferenceError
    │   ├── InvalidDigestError
    │   └── InvalidOCIError       an OCI descriptor, manifest or index
    ├── KeyFileError          (exit 2) a key or trust file cannot be read
    ├── SourceError           (exit 3) an image or repo source failed
    │   ├── ChartNotFoundError    no chart, or no version of it, matches the spec
    │   ├── ChartRepositoryError  a chart repository answered no index or no chart
    │   └── PinMismatchError      content differs from its sha256 pin or the lock
    ├── TargetError           (exit 3) a registry or git target failed
    │   ├── RefUpdateError        a ref would move non-fast-forward
    │   ├── UploadLostError       a blob upload must start again from the bundle
    │   ├── StateError            an import state file is unreadable or damaged
    │   └── NotPublishedError     a target does not hold what the import published
    ├── TransportError        (exit 3) an HTTP request could not be completed
    │   │                         (connection, TLS, retries exhausted); the registry
    │   │                         client re-raises it as SourceError or TargetError
    │   └── ResponseTooLargeError an answer longer than the caller allows
    └── AuthError             (exit 3) registry credentials cannot be read
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTEGRITY = 1
EXIT_USAGE = 2
EXIT_IO = 3


class AirbundleError(Exception):
    """Base of every error airbundle raises on purpose."""

    exit_code = EXIT_IO
    hint: str | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        codes: tuple[str, ...] = (),
        member: str | None = None,
        volumes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint
        # The HTTP status of the answer that caused the error, if one did.
        self.status = status
        # The registry's error codes from that answer (MANIFEST_UNKNOWN, DENIED...).
        self.codes = codes
        # The bundle member at fault, and the volumes of a set found damaged,
        # where known (verify --json reports them as fields).
        self.member = member
        self.volumes = volumes

    def diagnostics(self) -> str:
        """The message, followed by advice a user can act on, if any."""
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(AirbundleError):
    exit_code = EXIT_USAGE


class SpecError(UsageError):
    """The bundle spec is not valid; the message names file, line and field."""


class PolicyError(UsageError):
    """The image policy (containers-policy.json) or a key it names is invalid,
    or it asks for a check airbundle cannot make (signedBy, keyless fulcio...)."""


class FormatError(AirbundleError):
    """A value (reference, digest, name) is malformed.

    Pure parsers raise this without context; callers that know where the
    value came from (a spec field, a manifest entry) re-raise with that
    context, as a SpecError or ManifestError.
    """

    exit_code = EXIT_USAGE


class InvalidReferenceError(FormatError):
    pass


class InvalidDigestError(FormatError):
    pass


class InvalidOCIError(FormatError):
    pass


class KeyFileError(AirbundleError):
    exit_code = EXIT_USAGE


class IntegrityError(AirbundleError):
    exit_code = EXIT_INTEGRITY


class SignatureError(IntegrityError):
    pass


class ManifestError(IntegrityError):
    pass


class ArchiveError(IntegrityError):
    pass


class MemberDigestError(IntegrityError):
    pass


class TruncatedError(IntegrityError):
    pass


class FreshnessError(IntegrityError):
    """The bundle is authentic but must not be imported now (rollback, replay,
    expiry, wrong channel)."""


class VettingError(IntegrityError):
    """An image was refused: the image policy rejects it or its signatures, a
    vet command failed on it, or it lacks the vetting evidence asked for."""


class SignatureCheckError(VettingError):
    """One upstream signature does not hold; the reason inside a refusal."""


class SourceError(AirbundleError):
    exit_code = EXIT_IO


class ChartNotFoundError(SourceError):
    """The chart, or a version of it matching the spec, is not in its repository."""


class ChartRepositoryError(SourceError):
    """A chart repository answered something that is not an index or a chart."""


class PinMismatchError(SourceError):
    """Content fetched for the spec is not what its sha256 pin (or the lock) says."""


class TargetError(AirbundleError):
    exit_code = EXIT_IO


class RefUpdateError(TargetError):
    pass


class UploadLostError(TargetError):
    """A blob upload failed past the bytes still held in memory: resending it
    needs its bytes again from the bundle (the importer re-reads them once)."""


class StateError(TargetError):
    """An import state file cannot be read, or does not match its schema: it is
    refused, never taken for an empty state (that would forget rollback
    protection)."""

    hint = "restore it from backup; deleting it forgets rollback protection"


class NotPublishedError(TargetError):
    """After publishing, a tag, digest or ref does not answer as it should: the
    import is not recorded as done (a re-run publishes again)."""

    hint = "nothing was recorded; re-run the import (it publishes again what is missing)"


class TransportError(AirbundleError):
    """A request could not be completed (connection, TLS, retries exhausted).

    The registry client re-raises it as SourceError or TargetError, depending
    on the side, keeping it as the cause.
    """


class ResponseTooLargeError(TransportError):
    """An answer was longer than the caller allows: not worth asking again."""


class AuthError(AirbundleError):
    """Registry credentials cannot be read (an auth file, a credential helper)."""
