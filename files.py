"""Files on messages and deliveries (SPEC §10): read from a multipart form, kept under FILES_DIR
named by their SHA-256, described in PostgreSQL (the `files` table), served as downloads.

The bytes of a file go to FILES_DIR/<first two hex digits>/<sha256>, written to a temporary file
in FILES_DIR/tmp first and renamed into place, so a reader never meets half a file; the same bytes
uploaded twice are kept once. Nothing is written before every file of a form has passed the
limits, so a refused form stores nothing. Imports web for the request and its language.
"""
import hashlib
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from urllib.parse import quote

from bottle import HTTPResponse, request

from web import _, db_one, ngettext

ROOT = Path(__file__).resolve().parent
MAX_FILES = 5
MAX_FILE_BYTES = 10 * 1024 * 1024
CHUNK = 1024 * 1024

# Types a browser may be told as they are: none of them runs script in the page's origin (and every
# file goes out as an attachment with nosniff and a sandboxing CSP anyway). Anything else is sent
# as application/octet-stream.
SAFE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff",
    "application/pdf", "text/plain", "text/csv",
    "application/zip", "application/x-zip-compressed", "application/x-7z-compressed",
    "application/x-rar-compressed", "application/vnd.rar", "application/gzip", "application/x-tar",
    "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text", "application/vnd.oasis.opendocument.spreadsheet",
    "application/rtf", "audio/mpeg", "audio/ogg", "audio/wav", "video/mp4", "video/webm",
    "video/quicktime", "font/ttf", "font/otf", "font/woff", "font/woff2",
})
CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


def default_dir():
    """FILES_DIR from the environment, else .data/files/ beside the code."""
    return Path(os.environ.get("FILES_DIR") or ROOT / ".data" / "files")


def files_dir():
    return Path(request.app.config.get("files_dir") or default_dir())


def blob_path(directory, sha256):
    return Path(directory) / sha256[:2] / sha256


# ---------------------------------------------------------------------------------------------
# Reading a form's files

class Upload:
    """One file of a form, checked but not stored yet."""

    def __init__(self, part):
        self.file = part.file
        self.name = clean_name(part.raw_filename or "")
        self.content_type = declared_type(part.content_type or "")
        self.file.seek(0, os.SEEK_END)
        self.size = self.file.tell()
        self.file.seek(0)


def clean_name(raw):
    """The name a file is shown and downloaded with: the last path part, no control characters,
    at most 255 characters; 'file' when nothing is left."""
    name = unicodedata.normalize("NFC", str(raw)).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    return name[:255] or "file"


def declared_type(text):
    """The content type the browser declared, lower-cased without parameters, if well formed."""
    value = text.split(";")[0].strip().lower()
    return value if len(value) <= 100 and CONTENT_TYPE.fullmatch(value) else "application/octet-stream"


def read_uploads(form, field="files"):
    """The files of a multipart form's `field`, checked against the limits: at most MAX_FILES,
    each at most MAX_FILE_BYTES. A breach goes into form.errors[field] (and form.status becomes
    413 for a file too large, else 400) and nothing is returned to store."""
    try:
        parts = request.files.getall(field)
    except Exception:  # not a multipart body: no files
        parts = []
    if not parts:
        return []
    if len(parts) > MAX_FILES:
        form.errors[field] = ngettext("Attach at most %(num)s file.", "Attach at most %(num)s files.", MAX_FILES)
        form.status = 400
        return []
    uploads = [Upload(part) for part in parts]
    too_big = [upload.name for upload in uploads if upload.size > MAX_FILE_BYTES]
    if too_big:
        form.errors[field] = _("Each file may be at most 10 MB: %(names)s is larger.", names=", ".join(too_big))
        form.status = 413
        return []
    return uploads


# ---------------------------------------------------------------------------------------------
# Storing and describing

def store(upload, directory):
    """Writes the upload's bytes under their SHA-256; returns the hex digest."""
    upload.file.seek(0)
    return store_stream(upload.file, directory)


def store_stream(stream, directory):
    """Writes the bytes of a binary stream (an upload, a backup's file) under their SHA-256
    (temporary file, fsync, rename); returns the hex digest. Bytes already there are left as
    they are."""
    directory = Path(directory)
    tmp_dir = directory / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=tmp_dir, prefix="upload-", delete=False) as tmp:
        try:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                tmp.write(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    sha256 = digest.hexdigest()
    target = blob_path(directory, sha256)
    if target.exists():
        os.unlink(tmp.name)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.name, target)
    return sha256


def attach(uploads, user, *, message_id=None, delivery_id=None):
    """Stores each upload and describes it in PostgreSQL, on a message or a delivery written in
    this transaction by `user` (files_guard checks that)."""
    directory = files_dir()
    for position, upload in enumerate(uploads, start=1):
        sha256 = store(upload, directory)
        db_one("file_attach", sha256=sha256, size=upload.size, name=upload.name,
               content_type=upload.content_type, uploader_id=user["id"], message_id=message_id,
               delivery_id=delivery_id, position=position)


# ---------------------------------------------------------------------------------------------
# Serving

def served_type(content_type):
    return content_type if content_type in SAFE_TYPES else "application/octet-stream"


def content_disposition(name):
    """attachment, with an ASCII fallback name and the real one in RFC 5987 form."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\;' else "_" for ch in name) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def download(row):
    """The response that sends a file row's bytes: always a download, never sniffed, never run."""
    path = blob_path(files_dir(), row["sha256"])
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return None
    resp = HTTPResponse(body=handle, status=200)
    resp.set_header("Content-Type", served_type(row["content_type"]))
    resp.set_header("Content-Length", str(row["size"]))
    resp.set_header("Content-Disposition", content_disposition(row["name"]))
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
    resp.set_header("Cache-Control", "private, no-cache")
    return resp


def describe(row):
    """A file row as the pages and the API show it."""
    return {"id": row["id"], "name": row["name"], "size": row["size"],
            "content_type": served_type(row["content_type"]), "url": f"/files/{row['id']}"}
