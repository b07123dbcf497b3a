#!/usr/bin/env python3
"""
leadapi.py: a local stand-in for the LeadPro, Leadping and Lofty lead APIs and a Standard Webhooks
receiver, for leadbridge's tests and README demo. Python 3 standard library only.

It enforces the documented contracts (auth, validation, status codes, error shapes; see
/work/shared/reference/ and tests/standin/README.md) instead of echoing "OK", records every request
and every accepted lead, and can be switched into failure modes through a control API so that
retry and error handling are exercised for real.

    python3 tests/standin/leadapi.py --port 8099 [--host 127.0.0.1] [--record FILE]

Paths: /leadpro/api/v103/..., /leadping/leads/intake, /lofty/v1.0/leads..., /webhook/<name>,
/_control/... .  One line per request goes to stderr, without bodies or header values.
"""

import argparse
import base64
import binascii
import datetime
import hashlib
import hmac
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
import traceback
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

APIS = ("leadpro", "leadping", "lofty", "webhook")
MODES = ("ok", "error500", "unavailable", "ratelimit", "slow", "hang", "close", "valuation_failed")
ID_SHAPES = ("data", "top", "string", "big")
BIG_ID_BASE = 2 ** 53 + 1          # 9007199254740993: not representable as an IEEE double
LEADPRO_FIRST_ID = 1001
MAX_BODY = 1 << 20
HANG_LIMIT = 3600.0                # a hung request is released by reset, or after this many seconds
WEBHOOK_TOLERANCE = 300
DEFAULT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"test-webhook-secret-32-bytes!!!!").decode()

LEADPRO_PREFIX = "/leadpro/api/v103"
LEADPING_PREFIX = "/leadping"
LOFTY_PREFIX = "/lofty/v1.0"
LOFTY_SEARCH_DELAY = 2.0   # seconds before a new Lofty lead shows in a search (async persistence)
WEBHOOK_PREFIX = "/webhook/"

LEADPRO_OFFICES = [{"id": 1, "name": "Derby"}, {"id": "2", "name": "Nottingham"}]
LEADPRO_OFFICE_IDS = {1, 2}

SECRET_HEADERS = {"authorization", "x-api-key", "x-leadping-source-key", "webhook-signature",
                  "cookie", "proxy-authorization"}

EMAIL_RE = re.compile(r"^[^@\s\"<>(),;:\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
DECIMAL_RE = re.compile(r"^-?(?:0|[1-9]\d*)(?:\.\d+)?$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ISO8601_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
                        r"(?:Z|[+-]\d{2}:?\d{2})?)?$")


def now_iso():
    """The current UTC time as ISO 8601 with milliseconds and a Z."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def json_size(value):
    """Byte size of value as compact UTF-8 JSON (how the size limits are measured here)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and (not isinstance(v, float) or math.isfinite(v)))


def _reject_constant(name):
    raise ValueError("non-standard JSON constant " + name)


def parse_json(body):
    """Strict JSON from bytes: UTF-8, no NaN/Infinity. Raises ValueError."""
    text = body.decode("utf-8")
    return json.loads(text, parse_constant=_reject_constant)


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Configuration and shared state
# ---------------------------------------------------------------------------------------------

class Config:
    """Credentials and options; filled from flags, falling back to LEADAPI_* env, then defaults."""

    def __init__(self, args):
        self.host = args.host
        self.port = args.port
        self.record = args.record
        self.leadpro_key = args.leadpro_key
        self.leadping_source_id = args.leadping_source_id
        self.leadping_source_key = args.leadping_source_key
        self.leadping_bearer = args.leadping_bearer
        self.lofty_key = args.lofty_key
        self.lofty_bearer = args.lofty_bearer
        self.webhook_secret = args.webhook_secret
        secret = self.webhook_secret
        if secret.startswith("whsec_"):
            secret = secret[len("whsec_"):]
        try:
            self.webhook_key = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise SystemExit("leadapi: --webhook-secret is not whsec_<base64>")


class ApiMode:
    """The failure mode of one API: mode name, remaining count (None: until changed), options."""

    def __init__(self):
        self.mode = "ok"
        self.count = None
        self.delay = 1.0
        self.retry_after = 2

    def as_dict(self):
        return {"mode": self.mode, "count": self.count, "delay": self.delay,
                "retry_after": self.retry_after}


class State:
    """Everything the stand-in remembers. One lock guards it all."""

    def __init__(self, config):
        self.config = config
        self.lock = threading.Lock()
        self.hang_release = threading.Event()
        self._clear()

    def _clear(self):
        self.modes = {api: ApiMode() for api in APIS}
        self.id_shape = "data"
        self.leads = {api: [] for api in APIS}
        self.requests = {api: [] for api in APIS}
        self.leadpro_next = LEADPRO_FIRST_ID
        self.leadpro_big_next = BIG_ID_BASE
        self.leadpro_by_id = {}
        self.leadping_by_external = {}
        self.lofty_next = BIG_ID_BASE
        self.lofty_by_id = {}
        self.webhook_by_id = {}
        self.searches = {"leadpro": 0, "lofty": 0}

    def reset(self):
        """Back to the start-up state; releases every hung request (they are then closed)."""
        with self.lock:
            self.hang_release.set()
            self.hang_release = threading.Event()
            self._clear()
            self._write_record_locked()

    def take_mode(self, api, is_valuation):
        """
        The failure mode that applies to this request, or None for normal handling. Consumes one
        from the mode's count; valuation_failed applies (and counts) only on valuation requests.
        Returns (mode, delay, retry_after, hang_event).
        """
        with self.lock:
            m = self.modes[api]
            if m.mode == "ok" or (m.mode == "valuation_failed" and not is_valuation):
                return None
            taken = (m.mode, m.delay, m.retry_after, self.hang_release)
            if m.count is not None:
                m.count -= 1
                if m.count <= 0:
                    self.modes[api] = ApiMode()
            return taken

    def add_request(self, api, record):
        with self.lock:
            self.requests[api].append(record)

    def add_lead(self, api, record):
        """Stores an accepted lead record and rewrites the --record file."""
        with self.lock:
            self.leads[api].append(record)
            self._write_record_locked()

    def touched(self):
        """Call after changing a stored lead record in place (update, duplicate)."""
        with self.lock:
            self._write_record_locked()

    def _write_record_locked(self):
        path = self.config.record
        if not path:
            return
        data = {"leads": [lead for api in APIS for lead in self.leads[api]]}
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".leadapi-record.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

class Errors:
    """Field → list of reasons, in insertion order."""

    def __init__(self):
        self.by_field = {}

    def add(self, field, reason):
        self.by_field.setdefault(field, []).append(reason)

    def __bool__(self):
        return bool(self.by_field)


def human(field):
    return field.replace("_", " ")


def lp_string(body, errs, field, required=False, min_len=None, max_len=None):
    """LeadPro (Laravel-style) string rule for one field."""
    h = human(field)
    if field not in body:
        if required:
            errs.add(field, "The %s field is required." % h)
        return
    v = body[field]
    if required and (v is None or v == ""):
        errs.add(field, "The %s field is required." % h)
        return
    if not isinstance(v, str):
        errs.add(field, "The %s must be a string." % h)
        return
    if min_len is not None and len(v) < min_len:
        errs.add(field, "The %s must be at least %d characters." % (h, min_len))
    if max_len is not None and len(v) > max_len:
        errs.add(field, "The %s may not be greater than %d characters." % (h, max_len))


def lp_bool(body, errs, field):
    if field in body and not isinstance(body[field], bool):
        errs.add(field, "The %s field must be true or false." % human(field))


def lp_office(body, errs):
    if "office_id" not in body:
        return
    v = body["office_id"]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not is_int(v):
        errs.add("office_id", "The office id must be a number.")
    elif v not in LEADPRO_OFFICE_IDS:
        errs.add("office_id", "The selected office id is invalid.")


def lp_string_map(body, errs, field, limit, string_values):
    """meta / appointment_availability: an object, at most limit bytes of JSON."""
    if field not in body:
        return
    v = body[field]
    h = human(field)
    if not isinstance(v, dict):
        errs.add(field, "The %s must be an object." % h)
        return
    if json_size(v) > limit:
        errs.add(field, "The %s may not be greater than %d bytes of JSON." % (h, limit))
    if string_values:
        for k, item in v.items():
            if not isinstance(item, str):
                errs.add(field, "The %s.%s must be a string." % (h, k))


def lp_questionnaire(body, errs):
    """questionnaire: object or array whose every value is an array of exactly 2 strings."""
    if "questionnaire" not in body:
        return
    v = body["questionnaire"]
    if isinstance(v, dict):
        items = list(v.items())
    elif isinstance(v, list):
        items = list(enumerate(v))
    else:
        errs.add("questionnaire", "The questionnaire must be an object or an array.")
        return
    if json_size(v) > 2048:
        errs.add("questionnaire", "The questionnaire may not be greater than 2048 bytes of JSON.")
    for k, item in items:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(s, str) for s in item)):
            errs.add("questionnaire",
                     "The questionnaire.%s must be an array of 2 strings." % k)


LEADPRO_TYPES = ("sale", "vendor", "landlord", "let", "mortgage_request")
LEADPRO_SOURCES = ("rightmove", "rightmove_valuation", "zoopla", "zoopla_valuation", "onthemarket",
                   "gumtree", "s1", "lettingweb", "propertypal", "propertynews", "ivt", "homepage")
LEADPRO_PROPERTY_TYPES = ("detached", "semi-detached", "terraced", "flat-maisonette")
LEADPRO_CREATE_FIELDS = (
    "first_name", "last_name", "email", "phone", "type", "title", "advert_address",
    "advert_postcode", "advert_url", "advert_image", "message", "appointment_availability", "meta",
    "questionnaire", "gdpr_checkbox", "host", "office_id", "address", "postcode", "source",
    "international", "utm_source", "utm_campaign", "utm_medium", "utm_term", "utm_content",
    "property_type", "property_bedrooms")
LEADPRO_UPDATE_FIELDS = (
    "first_name", "last_name", "address", "postcode", "advert_address", "advert_postcode", "status",
    "office_id", "gdpr_checkbox", "next_action_date", "questionnaire", "meta", "utm_source",
    "utm_campaign", "utm_medium", "utm_term", "utm_content", "utm_gclid")
UTM_FIELDS = ("utm_source", "utm_campaign", "utm_medium", "utm_term", "utm_content")


def leadpro_validate_create(body, valuation):
    """The create (and valuation) rules of leadpro-create-lead.txt. Returns Errors."""
    errs = Errors()
    lp_string(body, errs, "first_name", True, 1, 50)
    lp_string(body, errs, "last_name", True, 1, 50)
    lp_string(body, errs, "email", True)
    if isinstance(body.get("email"), str) and body["email"] and not EMAIL_RE.match(body["email"]):
        errs.add("email", "The email must be a valid email address.")
    lp_string(body, errs, "phone", True, None, 255)
    lp_string(body, errs, "type", True)
    t = body.get("type")
    if isinstance(t, str) and t:
        if t not in LEADPRO_TYPES:
            errs.add("type", "The selected type is invalid.")
        elif valuation and t not in ("vendor", "landlord"):
            errs.add("type", "The selected type is invalid for an instant valuation "
                             "(vendor or landlord only).")
    lp_string(body, errs, "title", False, 1, 50)
    lp_string(body, errs, "advert_address", False, None, 100)
    lp_string(body, errs, "advert_postcode", False, 2, 10)
    lp_string(body, errs, "postcode", False, 2, 10)
    lp_string(body, errs, "address", False, None, 100)
    for f in ("advert_url", "advert_image", "message", "host"):
        lp_string(body, errs, f, False, None, 255)
    for f in UTM_FIELDS:
        lp_string(body, errs, f)
    lp_string_map(body, errs, "meta", 1024, True)
    lp_string_map(body, errs, "appointment_availability", 1024, False)
    lp_questionnaire(body, errs)
    lp_bool(body, errs, "gdpr_checkbox")
    lp_bool(body, errs, "international")
    lp_office(body, errs)
    if "property_type" in body and body["property_type"] not in LEADPRO_PROPERTY_TYPES:
        errs.add("property_type", "The selected property type is invalid.")
    if "property_bedrooms" in body:
        b = body["property_bedrooms"]
        if isinstance(b, str) and b.isdigit() and b.isascii():
            b = int(b)
        if not is_int(b) or b < 0 or b > 100:
            errs.add("property_bedrooms", "The property bedrooms must be an integer.")
    return errs


def leadpro_validate_update(body):
    """The update rules of leadpro-update-lead.txt. Returns Errors."""
    errs = Errors()
    for f in ("first_name", "last_name"):
        if f in body:
            lp_string(body, errs, f, True, 1, 50)
    for f in ("address", "postcode", "advert_address", "advert_postcode"):
        lp_string(body, errs, f, False, None, 255)
    for f in ("status",) + UTM_FIELDS + ("utm_gclid",):
        lp_string(body, errs, f)
    lp_office(body, errs)
    lp_bool(body, errs, "gdpr_checkbox")
    lp_string(body, errs, "next_action_date")
    if isinstance(body.get("next_action_date"), str) and \
            not ISO8601_RE.match(body["next_action_date"]):
        errs.add("next_action_date", "The next action date must be an ISO 8601 date.")
    lp_questionnaire(body, errs)
    lp_string_map(body, errs, "meta", 1024, True)
    return errs


def questionnaire_pairs(q):
    if isinstance(q, dict):
        return [list(v) for v in q.values()]
    if isinstance(q, list):
        return [list(v) for v in q]
    return []


def valuation_numbers(body):
    """Deterministic estimates from the postcode and property_bedrooms."""
    postcode = body.get("postcode") or body.get("advert_postcode") or ""
    norm = "".join(str(postcode).split()).upper()
    seed = sum((i + 1) * b for i, b in enumerate(norm.encode("utf-8"))) % 100
    beds = body.get("property_bedrooms", 3)
    beds = int(beds) if (is_int(beds) or (isinstance(beds, str) and beds.isdigit())) else 3
    avg_sale = 150000 + beds * 50000 + seed * 1000
    avg_rent = avg_sale // 250
    return {
        "minimum_sale_estimation": avg_sale * 9 // 10,
        "average_sale_estimation": avg_sale,
        "maximum_sale_estimation": avg_sale * 11 // 10,
        "minimum_rent_estimation": avg_rent * 9 // 10,
        "average_rent_estimation": avg_rent,
        "maximum_rent_estimation": avg_rent * 11 // 10,
    }


LEADPING_STRING_FIELDS = (
    "firstName", "lastName", "email", "phone", "phoneType", "address1", "address2", "city",
    "state", "zip", "postalCode", "gender", "subId", "sellerLeadId", "sellerLeadIdentifier",
    "utmSource", "utmMedium", "utmCampaign", "utmTerm", "utmContent", "referrer", "landingPage",
    "trustedFormUrl", "externalId")
LEADPING_DATE_FIELDS = ("dateOfBirth", "birthDate")
LEADPING_PRICE_FIELDS = ("directPostPrice", "price")
LEADPING_FIELDS = set(LEADPING_STRING_FIELDS + LEADPING_DATE_FIELDS + LEADPING_PRICE_FIELDS
                      + ("sourceMetadata",))


def leadping_validate(body):
    """leadping-intake.txt request rules. body is any JSON value. Returns Errors."""
    errs = Errors()
    if not isinstance(body, dict):
        errs.add("body", "The request body must be a JSON object.")
        return errs
    for k in body:
        if k not in LEADPING_FIELDS:
            errs.add(k, "The field '%s' is not allowed." % k)
    for f in LEADPING_STRING_FIELDS:
        if f in body and body[f] is not None and not isinstance(body[f], str):
            errs.add(f, "'%s' must be a string or null." % f)
    for f in LEADPING_DATE_FIELDS:
        v = body.get(f)
        if v is None:
            continue
        ok = isinstance(v, str) and DATE_RE.match(v)
        if ok:
            try:
                datetime.date.fromisoformat(v)
            except ValueError:
                ok = False
        if not ok:
            errs.add(f, "'%s' must be a date as YYYY-MM-DD or null." % f)
    for f in LEADPING_PRICE_FIELDS:
        v = body.get(f)
        if v is None or is_num(v) or (isinstance(v, str) and DECIMAL_RE.match(v)):
            continue
        errs.add(f, "'%s' must be a number or a string matching %s." % (f, DECIMAL_RE.pattern))
    if "sourceMetadata" in body:
        v = body["sourceMetadata"]
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            errs.add("sourceMetadata", "'sourceMetadata' must be an object of string values.")
    if not body.get("email") and not body.get("phone"):
        errs.add("email", "At least one of 'email' or 'phone' is required.")
        errs.add("phone", "At least one of 'email' or 'phone' is required.")
    return errs


def price_text(v):
    if v is None:
        return None
    if isinstance(v, str):
        return v
    return repr(v) if isinstance(v, float) else str(v)


def leadping_response(body, lead_id, created):
    """The documented 201 body, filled from the request."""
    g = body.get
    phone = None
    if g("phone"):
        phone = {"number": g("phone"), "type": g("phoneType")}
    meta_keys = ("trustedFormUrl", "utmSource", "utmMedium", "utmCampaign", "utmTerm",
                 "utmContent", "referrer", "landingPage", "subId", "externalId", "sellerLeadId")
    metadata = {k: g(k) for k in meta_keys}
    metadata.update({
        "pubId": None, "ipAddress": None, "userAgent": None, "createdAt": created,
        "price": price_text(g("price")), "directPostPrice": price_text(g("directPostPrice")),
        "product": None, "vertical": None, "complianceStatus": None,
        "complianceBlockedReason": None, "sourceMetadata": g("sourceMetadata") or {},
        "assignedPhoneNumberId": None, "smsConsentStatus": None, "smsOptedOut": False,
        "smsOptOutAt": None, "smsOptInAt": None, "smsHelpRequestedAt": None,
        "smsConsentPhoneNumber": None, "userId": None, "businessId": None,
    })
    return {
        "metadata": metadata,
        "contact": {
            "firstName": g("firstName"), "lastName": g("lastName"),
            "streetAddress": {"address1": g("address1"), "address2": g("address2"),
                              "city": g("city"), "state": g("state"),
                              "postalCode": g("postalCode") or g("zip")},
            "phone": phone, "email": g("email"),
        },
        "customer": {
            "gender": {"value": g("gender")} if g("gender") else None,
            "height": None, "weight": None, "birthDate": g("birthDate") or g("dateOfBirth"),
            "maritalStatus": None, "income": None, "isHomeowner": None,
            "monthsAtResidence": None, "creditScore": None, "hasBankruptcy": None,
            "employmentType": None, "numberOfDependents": None, "hasMedicalCondition": None,
        },
        "id": lead_id,
        "createdAt": created,
        "modifiedAt": None,
    }


class LoftyError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


LOFTY_LEAD_TYPES = {-1, 1, 2, 5, 6, 7, 8, 9}
S = ("str", None)


def lofty_list(item):
    return ("list", item, None)


LOFTY_PROPERTY = {
    "price": ("num",), "state": S, "city": S, "streetAddress": S, "zipCode": S, "county": S,
    "propertyType": S, "bedrooms": ("num",), "bathrooms": ("num",), "squareFeet": ("num",),
    "lotSize": ("num",), "parkingSpace": ("num",), "floors": ("num",), "mailAddress": ("bool",),
    "id": ("int",), "leadUserId": ("int",), "listingId": S, "autoListingId": ("int",),
    "label": S, "note": S, "listingStatus": S, "labelList": S, "pictureUrl": S,
    "siteListingUrl": S, "labelType": S, "priceMax": ("num",), "priceMin": ("num",),
}
LOFTY_INQUIRY = {
    "priceMin": ("num",), "priceMax": ("num",), "propertyType": lofty_list(S),
    "bedroomsMin": ("int",), "bathroomsMin": S, "locations": lofty_list(("obj",)),
    "id": ("int",), "leadUserId": ("int",), "bedroomsMax": ("int",), "bathroomsMax": S,
    "modifyByAgent": ("bool",), "createTime": S, "updateTime": S, "defaultValue": ("bool",),
}
LOFTY_ATTRIBUTE = {"attributeName": S, "attributeType": S, "value": S, "params": S}
LOFTY_FAMILY = {"firstName": ("str", 30), "relationship": S, "lastName": ("str", 30),
                "phones": lofty_list(("str", 20)), "emails": lofty_list(("email",)),
                "birthday": S}
LOFTY_FIELDS = {
    "firstName": ("str", 30), "lastName": ("str", 30), "cannotText": ("bool",),
    "cannotCall": ("bool",), "cannotEmail": ("bool",), "emails": lofty_list(("email",)),
    "phones": lofty_list(("str", 20)), "leadTypes": lofty_list(("leadtype",)),
    "assignedUserId": ("int",), "streetAddress": S, "city": S, "state": S, "zipCode": S,
    "referredBy": S, "stage": ("str", 19), "groups": lofty_list(("str", 30)),
    "segments": lofty_list(("str", 30)), "tags": lofty_list(("str", 64)),
    "tagsAdd": lofty_list(("str", 64)), "source": S,
    "inquiry": ("struct", LOFTY_INQUIRY, ()), "property": ("struct", LOFTY_PROPERTY, ()),
    "unsubscription": ("bool",), "welcomeEmail": ("bool",), "leadAlert": ("bool",),
    "customAttributeList": lofty_list(("struct", LOFTY_ATTRIBUTE, ("attributeName", "value"))),
    "birthday": ("birthday",), "leadRouting": ("bool",), "assignGroupId": ("int",),
    "buyingTimeFrame": S, "preQual": S, "houseToSell": S, "fthb": S, "withBuyerAgent": S,
    "sellingTimeFrame": S, "mortgage": S, "buyHouse": S, "withListingAgent": S,
    "leadTransaction": ("obj",), "leadFamilyMemberList": ("list", ("struct", LOFTY_FAMILY, ()), 4),
    "language": S, "content": S, "isPin": ("bool",), "ownershipId": ("int",),
    "ownershipScope": ("enum", ("TEAM", "OFFICE", "PERSONAL")), "defaultInquiryParam": ("bool",),
    "specifiedAssignGroupId": ("bool",),
}
BIRTHDAY_RE = re.compile(r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [1-9]\d?, \d{4}$")
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def lofty_check(path, v, spec):
    """Raises LoftyError when v (not None) does not fit spec."""
    kind = spec[0]

    def invalid(why):
        raise LoftyError("PARAMETER_INVALID", "%s %s" % (path, why))

    if kind == "str":
        if not isinstance(v, str):
            invalid("must be a string")
        if spec[1] is not None and len(v) > spec[1]:
            raise LoftyError("PARAMETER_TOO_LONG", "%s exceeds %d characters" % (path, spec[1]))
    elif kind == "email":
        if not isinstance(v, str) or not EMAIL_RE.match(v):
            invalid("must be a valid email address")
    elif kind == "bool":
        if not isinstance(v, bool):
            invalid("must be a boolean")
    elif kind == "int":
        if not is_int(v) or not INT64_MIN <= v <= INT64_MAX:
            invalid("must be an integer")
    elif kind == "num":
        if not is_num(v):
            invalid("must be a number")
    elif kind == "obj":
        if not isinstance(v, dict):
            invalid("must be an object")
    elif kind == "leadtype":
        if not is_int(v) or v not in LOFTY_LEAD_TYPES:
            invalid("must be one of -1, 1, 2, 5, 6, 7, 8, 9")
    elif kind == "birthday":
        if not isinstance(v, str) or not BIRTHDAY_RE.match(v):
            invalid("must look like \"Jun 5, 2001\" (MMM d, yyyy)")
    elif kind == "enum":
        if v not in spec[1]:
            invalid("must be one of " + ", ".join(spec[1]))
    elif kind == "list":
        if not isinstance(v, list):
            invalid("must be an array")
        if spec[2] is not None and len(v) > spec[2]:
            invalid("may hold at most %d items" % spec[2])
        for i, item in enumerate(v):
            if item is None:
                raise LoftyError("PARAMETER_INVALID", "%s[%d] must not be null" % (path, i))
            lofty_check("%s[%d]" % (path, i), item, spec[1])
    elif kind == "struct":
        if not isinstance(v, dict):
            invalid("must be an object")
        for k, item in v.items():
            if k not in spec[1]:
                raise LoftyError("PARAMETER_INVALID", "%s.%s is not a known field" % (path, k))
            if item is not None:
                lofty_check("%s.%s" % (path, k), item, spec[1][k])
        for k in spec[2]:
            if v.get(k) is None:
                raise LoftyError("PARAMETER_INVALID", "%s.%s is required" % (path, k))
    else:
        raise AssertionError(kind)


def lofty_validate(body, create):
    """Lofty create/update rules. Raises LoftyError for the first problem found."""
    if not isinstance(body, dict):
        raise LoftyError("PARAMETER_INVALID", "request body must be a JSON object")
    if create:
        fn = body.get("firstName")
        if fn is None or (isinstance(fn, str) and not fn.strip()):
            raise LoftyError("PARAMETER_INVALID", "firstName is required")
    for k, v in body.items():
        if k not in LOFTY_FIELDS:
            raise LoftyError("PARAMETER_INVALID", "%s is not a known field" % k)
        if v is not None:
            lofty_check(k, v, LOFTY_FIELDS[k])


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

class BodyError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Handler(BaseHTTPRequestHandler):
    """One connection; each request is dispatched by path prefix to an API personality."""

    protocol_version = "HTTP/1.1"
    server_version = "leadapi-standin/1"
    timeout = 120

    # -- plumbing ------------------------------------------------------------------------------

    def version_string(self):
        return self.server_version

    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, fmt, *args):
        # Only http.server's own protocol errors land here; they carry no body or header values.
        sys.stderr.write("leadapi %s protocol %s\n" % (now_iso(), fmt % args))

    def _log_line(self, api, outcome):
        ms = (time.monotonic() - self._t0) * 1000.0
        path = urlsplit(self.path).path
        if len(path) > 200:
            path = path[:200] + "..."
        sys.stderr.write("leadapi %s %s %s %s %s %.0fms\n"
                         % (now_iso(), api or "-", self.command, path, outcome, ms))
        sys.stderr.flush()

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            total = 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise BodyError(400, "truncated chunked body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BodyError(400, "bad chunk size")
                if size < 0:
                    raise BodyError(400, "bad chunk size")
                if size == 0:
                    while True:
                        trailer = self.rfile.readline(8192)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise BodyError(413, "body too large")
                data = self.rfile.read(size)
                if len(data) != size:
                    raise BodyError(400, "truncated chunked body")
                chunks.append(data)
                self.rfile.readline(1024)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl)
        except ValueError:
            raise BodyError(400, "bad Content-Length")
        if n < 0:
            raise BodyError(400, "bad Content-Length")
        if n > MAX_BODY:
            raise BodyError(413, "body too large")
        data = self.rfile.read(n)
        if len(data) != n:
            raise BodyError(400, "truncated body")
        return data

    def _send(self, status, payload, content_type="application/json", headers=None):
        """Answers with payload (dict/list → JSON, bytes as is) and a correct Content-Length."""
        data = payload if isinstance(payload, bytes) else dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._status = status
        if self._rec is not None:
            self._rec["status"] = status

    def _header(self, name):
        return self.headers.get(name)

    def _recorded_headers(self):
        out = {}
        for k, v in self.headers.items():
            lk = k.lower()
            if lk in SECRET_HEADERS:
                scheme = v.split(" ", 1)[0] if lk in ("authorization", "proxy-authorization") \
                    and " " in v else None
                v = (scheme + " ***") if scheme else "***"
            out[lk] = v
        return out

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self):
        self._t0 = time.monotonic()
        self._status = None
        self._rec = None
        state = self.server.state
        url = urlsplit(self.path)
        path = url.path
        api = None
        outcome = None
        try:
            try:
                body = self._read_body()
            except BodyError as e:
                self.close_connection = True
                self._send(e.status, {"error": e.message})
                return
            if path == "/_control" or path.startswith("/_control/"):
                api = "_control"
                self._control(path, parse_qs(url.query), body)
                return
            if path.startswith(LEADPRO_PREFIX + "/"):
                api, sub = "leadpro", path[len(LEADPRO_PREFIX):]
            elif path.startswith(LEADPING_PREFIX + "/"):
                api, sub = "leadping", path[len(LEADPING_PREFIX):]
            elif path.startswith(LOFTY_PREFIX + "/"):
                api, sub = "lofty", path[len(LOFTY_PREFIX):]
            elif path.startswith(WEBHOOK_PREFIX) and len(path) > len(WEBHOOK_PREFIX):
                api, sub = "webhook", path[len(WEBHOOK_PREFIX):]
            else:
                self._send(404, {"error": "no stand-in API at this path"})
                return
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = body.decode("latin-1")
            self._rec = {"api": api, "method": self.command, "path": path, "query": url.query,
                         "headers": self._recorded_headers(), "body": text,
                         "received": now_iso(), "status": None}
            state.add_request(api, self._rec)
            is_val = api == "leadpro" and self.command == "POST" and sub == "/leads/valuation"
            taken = state.take_mode(api, is_val)
            flags = set()
            if taken is not None:
                outcome = self._apply_mode(api, taken)
                if outcome is not None:
                    return
                if taken[0] == "valuation_failed":
                    flags.add("valuation_failed")
            getattr(self, "_api_" + api)(sub, body, flags)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            outcome = "client-gone"
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            if self._status is None:
                try:
                    self._send(500, {"error": "stand-in internal error (see its stderr)"})
                except OSError:
                    pass
        finally:
            if self._rec is not None and outcome is not None:
                self._rec["outcome"] = outcome
            self._log_line(api, outcome or self._status)

    # -- failure modes -------------------------------------------------------------------------

    def _api_error(self, api, status, code, message, headers=None):
        """An error in the API's own shape."""
        if api == "leadpro":
            self._send(status, {"message": message}, headers=headers)
        elif api == "leadping":
            self._problem(status, message, headers=headers)
        elif api == "lofty":
            self._send(status, {"code": code, "message": message}, headers=headers)
        else:
            self._send(status, {"error": message}, headers=headers)

    def _problem(self, status, detail, errors=None, headers=None):
        body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                "detail": detail}
        if errors is not None:
            body["errors"] = errors
        self._send(status, body, content_type="application/problem+json", headers=headers)

    def _apply_mode(self, api, taken):
        """Acts out a failure mode. Returns the outcome if the request is finished, else None."""
        mode, delay, retry_after, hang_event = taken
        if mode == "slow":
            time.sleep(delay)
            return None
        if mode == "valuation_failed":
            return None
        if mode == "hang":
            hang_event.wait(HANG_LIMIT)
            self.close_connection = True
            return "hung"
        if mode == "close":
            self.close_connection = True
            return "closed"
        if mode == "error500":
            self._api_error(api, 500, "INTERNAL_ERROR", "Server Error (stand-in failure mode)")
        elif mode == "unavailable":
            self._api_error(api, 503, "SERVICE_UNAVAILABLE",
                            "Service Unavailable (stand-in failure mode)")
        elif mode == "ratelimit":
            if api == "lofty":
                reset = int(time.time()) + int(retry_after)
                self._api_error(api, 429, "TOO_MANY_REQUESTS", "Too many requests",
                                headers={"X-RateLimit-Reset": reset})
            else:
                self._api_error(api, 429, "TOO_MANY_REQUESTS", "Too Many Attempts.",
                                headers={"Retry-After": int(retry_after)})
        return self._status

    # -- LeadPro -------------------------------------------------------------------------------

    def _leadpro_id_body(self, lead_id, shape, extra=None):
        if shape == "top":
            out = {"id": lead_id}
        elif shape == "string":
            out = {"data": {"id": str(lead_id)}}
        else:
            out = {"data": {"id": lead_id}}
        if extra:
            out.update(extra)
        return out

    def _api_leadpro(self, sub, body, flags):
        state = self.server.state
        key = self._header("X-API-KEY")
        if key is None or not hmac.compare_digest(key.encode(), state.config.leadpro_key.encode()):
            self._send(401, {"message": "Unauthenticated."})
            return
        m = re.fullmatch(r"/leads/([^/]+)", sub)
        if sub == "/offices":
            if self.command != "GET":
                self._send(405, {"message": "The %s method is not supported for this route."
                                 % self.command})
                return
            self._send(200, {"data": LEADPRO_OFFICES})
            return
        if sub in ("/leads", "/leads/valuation") and self.command == "POST":
            self._leadpro_create(body, sub == "/leads/valuation", flags)
            return
        if sub == "/person/leads":
            self._leadpro_person_leads()
            return
        if m and m.group(1) != "valuation" and self.command in ("PATCH", "GET"):
            lead_id = int(m.group(1)) if m.group(1).isdigit() and m.group(1).isascii() else None
            with state.lock:
                rec = state.leadpro_by_id.get(lead_id)
            if rec is None:
                self._send(404, {"message": "Lead not found."})
                return
            if self.command == "GET":
                with state.lock:
                    snapshot = json.loads(json.dumps(rec["state"]))
                self._send(200, {"data": snapshot})
                return
            self._leadpro_update(rec, body)
            return
        if sub in ("/leads", "/leads/valuation", "/offices") or m:
            self._send(405, {"message": "The %s method is not supported for this route."
                             % self.command})
            return
        self._send(404, {"message": "Not Found."})

    def _leadpro_person_leads(self):
        """GET /person/leads?email=&phone=: the leads of one person (lookups.txt). Email or phone
        is required; either is enough. Each item carries its id, contact fields and meta."""
        if self.command != "GET":
            self._send(405, {"message": "The %s method is not supported for this route."
                             % self.command})
            return
        q = parse_qs(urlsplit(self.path).query)
        email = (q.get("email") or [""])[0].strip().lower()
        phone = (q.get("phone") or [""])[0].strip()
        if not email and not phone:
            self._send(422, {"message": "The given data was invalid.",
                             "errors": {"email": ["The email field is required when phone is "
                                                  "not present."]}})
            return
        state = self.server.state
        out = []
        with state.lock:
            for lead_id in sorted(state.leadpro_by_id, key=str):
                lead = state.leadpro_by_id[lead_id]["state"]
                if (email and str(lead.get("email", "")).lower() == email) or \
                        (phone and str(lead.get("phone", "")) == phone):
                    out.append(json.loads(json.dumps(
                        {k: lead.get(k) for k in ("id", "type", "email", "phone", "meta",
                                                  "created_at") if k in lead})))
        state.searches["leadpro"] += 1
        self._send(200, {"data": out})

    def _leadpro_parse(self, body):
        ctype = (self._header("Content-Type") or "").lower()
        if "json" not in ctype:
            self._send(400, {"message": "The request body must be JSON "
                                        "(Content-Type: application/json)."})
            return None
        try:
            obj = parse_json(body)
        except ValueError:
            self._send(400, {"message": "The request body is not valid JSON."})
            return None
        if not isinstance(obj, dict):
            self._send(400, {"message": "The request body must be a JSON object."})
            return None
        return obj

    def _leadpro_create(self, body, valuation, flags):
        state = self.server.state
        obj = self._leadpro_parse(body)
        if obj is None:
            return
        errs = leadpro_validate_create(obj, valuation)
        if errs:
            self._send(422, {"message": "The given data was invalid.", "errors": errs.by_field})
            return
        lead = {k: v for k, v in obj.items() if k in LEADPRO_CREATE_FIELDS}
        ignored = sorted(k for k in obj if k not in LEADPRO_CREATE_FIELDS)
        src = obj.get("source")
        replaced = None
        if src is None:
            lead["source"] = "ivt" if valuation else "homepage"
        elif src not in LEADPRO_SOURCES:
            replaced = src
            lead["source"] = "homepage"
        if "questionnaire" in lead:
            lead["questionnaire"] = questionnaire_pairs(lead["questionnaire"])
        extra = None
        if valuation:
            if "valuation_failed" in flags:
                extra = {"valuation_status": "Failed"}
            else:
                extra = dict(valuation_numbers(obj), valuation_status="Success")
        with state.lock:
            shape = state.id_shape
            if shape == "big":
                lead_id = state.leadpro_big_next
                state.leadpro_big_next += 2
            else:
                lead_id = state.leadpro_next
                state.leadpro_next += 1
            lead["id"] = lead_id
            lead["created_at"] = now_iso()
            rec = {"api": "leadpro", "id": lead_id, "kind": "valuation" if valuation else "lead",
                   "method": self.command, "path": self._rec["path"], "body": self._rec["body"],
                   "json": obj, "headers": self._rec["headers"], "received": self._rec["received"],
                   "state": lead, "ignored_fields": ignored, "source_replaced": replaced,
                   "updates": []}
            if extra:
                rec["valuation"] = extra
            state.leadpro_by_id[lead_id] = rec
        state.add_lead("leadpro", rec)
        self._rec["lead_id"] = lead_id
        self._send(200, self._leadpro_id_body(lead_id, shape, extra))

    def _leadpro_update(self, rec, body):
        state = self.server.state
        obj = self._leadpro_parse(body)
        if obj is None:
            return
        errs = leadpro_validate_update(obj)
        if errs:
            self._send(422, {"message": "The given data was invalid.", "errors": errs.by_field})
            return
        with state.lock:
            lead = rec["state"]
            for k, v in obj.items():
                if k not in LEADPRO_UPDATE_FIELDS:
                    continue
                if k == "questionnaire":
                    lead["questionnaire"] = lead.get("questionnaire", []) + questionnaire_pairs(v)
                elif k == "meta":
                    merged = dict(lead.get("meta") or {})
                    merged.update(v)
                    lead["meta"] = merged
                else:
                    lead[k] = v
            lead["updated_at"] = now_iso()
            rec["updates"].append({"body": self._rec["body"], "json": obj,
                                   "received": self._rec["received"],
                                   "ignored_fields": sorted(k for k in obj
                                                            if k not in LEADPRO_UPDATE_FIELDS)})
            shape = state.id_shape
        state.touched()
        self._send(200, self._leadpro_id_body(rec["id"], shape))

    # -- Leadping ------------------------------------------------------------------------------

    def _api_leadping(self, sub, body, flags):
        state = self.server.state
        cfg = state.config
        auth = self._header("Authorization")
        sid = self._header("X-Leadping-Source-Id")
        skey = self._header("X-Leadping-Source-Key")
        if auth is not None and auth[:7].lower() == "bearer ":
            if not hmac.compare_digest(auth[7:].strip().encode(), cfg.leadping_bearer.encode()):
                self._problem(403, "The bearer token is not valid for any lead source.")
                return
            self._rec["auth"] = "bearer"
        elif sid is not None or skey is not None:
            if not sid or not skey:
                self._problem(401, "Both X-Leadping-Source-Id and X-Leadping-Source-Key "
                                   "are required.")
                return
            if not (hmac.compare_digest(sid.encode(), cfg.leadping_source_id.encode())
                    and hmac.compare_digest(skey.encode(), cfg.leadping_source_key.encode())):
                self._problem(403, "The source id and key do not match an active lead source.")
                return
            self._rec["auth"] = "source-key"
        else:
            self._problem(401, "Missing credentials: send X-Leadping-Source-Id and "
                               "X-Leadping-Source-Key, or Authorization: Bearer lp_src_...")
            return
        if sub != "/leads/intake":
            self._problem(404, "No such endpoint.")
            return
        if self.command != "POST":
            self._problem(405, "Only POST is allowed here.", headers={"Allow": "POST"})
            return
        ctype = (self._header("Content-Type") or "").lower()
        if "json" not in ctype:
            self._problem(415, "The request body must be application/json.")
            return
        try:
            obj = parse_json(body)
        except ValueError:
            self._problem(400, "The request body is not valid JSON.",
                          errors={"body": ["The request body is not valid JSON."]})
            return
        errs = leadping_validate(obj)
        if errs:
            fields = list(errs.by_field)
            first = fields[0]
            detail = "Invalid field '%s': %s" % (first, errs.by_field[first][0])
            if len(fields) > 1:
                detail += " (also: %s)" % ", ".join(fields[1:])
            self._problem(400, detail, errors=errs.by_field)
            return
        ext = obj.get("externalId")
        with state.lock:
            dup = state.leadping_by_external.get(ext) if ext else None
            if dup is not None:
                dup["duplicates"] += 1
                dup["duplicate_bodies"].append(self._rec["body"])
                response = dup["response"]
            else:
                created = now_iso()
                lead_id = "lp_" + uuid.uuid4().hex
                response = leadping_response(obj, lead_id, created)
                rec = {"api": "leadping", "id": lead_id, "method": self.command,
                       "path": self._rec["path"], "body": self._rec["body"], "json": obj,
                       "headers": self._rec["headers"], "received": self._rec["received"],
                       "response": response, "duplicates": 0, "duplicate_bodies": []}
                if ext:
                    state.leadping_by_external[ext] = rec
        if dup is not None:
            self._rec["duplicate"] = True
            state.touched()
        else:
            state.add_lead("leadping", rec)
        self._rec["lead_id"] = response["id"]
        self._send(201, response, headers={"Location": "/leads/" + response["id"]})

    # -- Lofty ---------------------------------------------------------------------------------

    def _api_lofty(self, sub, body, flags):
        state = self.server.state
        cfg = state.config
        auth = (self._header("Authorization") or "").strip()
        scheme, _, cred = auth.partition(" ")
        cred = cred.strip()
        ok = False
        if scheme.lower() == "token":
            ok = hmac.compare_digest(cred.encode(), cfg.lofty_key.encode())
        elif scheme.lower() == "bearer":
            ok = hmac.compare_digest(cred.encode(), cfg.lofty_bearer.encode())
        if not ok:
            self._send(401, {"code": "BAD_CREDENTIALS",
                             "message": "Bad credentials: use 'Authorization: token <api key>' "
                                        "or 'Authorization: Bearer <access token>'"})
            return
        self._rec["auth"] = scheme.lower()
        m = re.fullmatch(r"/leads/([^/]+)", sub)
        if sub == "/leads":
            if self.command == "GET":
                self._lofty_search()
                return
            if self.command != "POST":
                self._send(405, {"code": "METHOD_NOT_ALLOWED", "message": "use GET or POST"})
                return
            self._lofty_write(None, body)
            return
        if m:
            raw = m.group(1)
            if not (raw.isdigit() and raw.isascii()):
                self._send(400, {"code": "PARAMETER_INVALID",
                                 "message": "leadId must be an integer"})
                return
            lead_id = int(raw)
            with state.lock:
                rec = state.lofty_by_id.get(lead_id)
            if self.command not in ("GET", "PUT"):
                self._send(405, {"code": "METHOD_NOT_ALLOWED", "message": "use GET or PUT"})
                return
            if rec is None:
                self._send(404, {"code": "LEAD_NOT_EXIST", "message": "lead does not exist"})
                return
            if self.command == "GET":
                with state.lock:
                    snapshot = json.loads(json.dumps(rec["state"]))
                self._send(200, snapshot)
                return
            self._lofty_write(rec, body)
            return
        self._send(404, {"code": "NOT_FOUND", "message": "no such endpoint"})

    def _lofty_search(self):
        """GET /v1.0/leads?email=&phone=: matching leads with their leadId (lookups.txt).
        Persistence is asynchronous: a lead is found only LOFTY_SEARCH_DELAY seconds after it
        was created, as the documentation warns."""
        q = parse_qs(urlsplit(self.path).query)
        email = (q.get("email") or [""])[0].strip().lower()
        phone = (q.get("phone") or [""])[0].strip()
        if not email and not phone:
            self._send(400, {"code": "PARAMETER_INVALID", "message": "email or phone is required"})
            return
        state = self.server.state
        out = []
        now = time.monotonic()
        with state.lock:
            for lead_id in sorted(state.lofty_by_id):
                rec = state.lofty_by_id[lead_id]
                if now - rec.get("created_mono", 0) < LOFTY_SEARCH_DELAY:
                    continue
                lead = rec["state"]
                emails = [str(e).lower() for e in lead.get("emails") or []]
                if (email and email in emails) or (phone and phone in (lead.get("phones") or [])):
                    out.append(json.loads(json.dumps(lead)))
        state.searches["lofty"] += 1
        if not out:
            self._send(404, {"code": "LEAD_NOT_EXIST", "message": "no lead matches"})
            return
        self._send(200, {"leads": out, "_metadata": {"total": len(out)}})

    def _lofty_write(self, rec, body):
        """Create (rec None) or update (merge into rec)."""
        state = self.server.state
        ctype = (self._header("Content-Type") or "").lower()
        if "json" not in ctype:
            self._send(415, {"code": "UNSUPPORTED_MEDIA_TYPE",
                             "message": "Content-Type must be application/json"})
            return
        try:
            obj = parse_json(body)
        except ValueError:
            self._send(400, {"code": "PARAMETER_INVALID", "message": "body is not valid JSON"})
            return
        try:
            lofty_validate(obj, rec is None)
        except LoftyError as e:
            self._send(400, {"code": e.code, "message": e.message})
            return
        if rec is None:
            with state.lock:
                lead_id = state.lofty_next
                state.lofty_next += 2
                lead = {k: v for k, v in obj.items() if v is not None and k != "tagsAdd"}
                if obj.get("tagsAdd"):
                    lead["tags"] = list(lead.get("tags") or []) + \
                        [t for t in obj["tagsAdd"] if t not in (lead.get("tags") or [])]
                lead["leadId"] = lead_id
                new = {"api": "lofty", "id": lead_id, "method": self.command,
                       "path": self._rec["path"], "body": self._rec["body"], "json": obj,
                       "headers": self._rec["headers"], "received": self._rec["received"],
                       "state": lead, "updates": [], "created_mono": time.monotonic()}
                state.lofty_by_id[lead_id] = new
            state.add_lead("lofty", new)
        else:
            with state.lock:
                lead = rec["state"]
                lead_id = rec["id"]
                for k, v in obj.items():
                    if v is None:
                        continue
                    if k == "tagsAdd":
                        lead["tags"] = list(lead.get("tags") or []) + \
                            [t for t in v if t not in (lead.get("tags") or [])]
                    elif k == "property" and isinstance(lead.get("property"), dict):
                        lead["property"] = dict(lead["property"], **v)
                    else:
                        lead[k] = v
                rec["updates"].append({"body": self._rec["body"], "json": obj,
                                       "received": self._rec["received"]})
            state.touched()
        self._rec["lead_id"] = lead_id
        self._send(200, {"leadId": lead_id})

    # -- Webhook sink --------------------------------------------------------------------------

    def _api_webhook(self, name, body, flags):
        state = self.server.state
        if self.command != "POST":
            self._send(405, {"error": "only POST is accepted"}, headers={"Allow": "POST"})
            return
        wid = self._header("webhook-id")
        ts = self._header("webhook-timestamp")
        sig = self._header("webhook-signature")
        if not wid or not ts or not sig:
            self._send(401, {"error": "missing webhook-id, webhook-timestamp or "
                                      "webhook-signature header"})
            return
        if not (ts.isdigit() and ts.isascii()) or len(ts) > 12:
            self._send(401, {"error": "webhook-timestamp is not integer seconds"})
            return
        if abs(time.time() - int(ts)) > WEBHOOK_TOLERANCE:
            self._send(401, {"error": "webhook-timestamp is outside the 5 minute tolerance"})
            return
        signed = wid.encode("utf-8") + b"." + ts.encode("ascii") + b"." + body
        expected = base64.b64encode(hmac.new(state.config.webhook_key, signed,
                                             hashlib.sha256).digest())
        good = False
        for part in sig.split():
            version, _, value = part.partition(",")
            if version == "v1" and hmac.compare_digest(value.encode("utf-8", "replace"),
                                                       expected):
                good = True
        if not good:
            self._send(401, {"error": "no valid v1 signature"})
            return
        try:
            obj = parse_json(body)
        except ValueError:
            self._send(400, {"error": "body is not valid JSON"})
            return
        key = (name, wid)
        with state.lock:
            dup = state.webhook_by_id.get(key)
            if dup is not None:
                dup["duplicates"] += 1
            else:
                rec = {"api": "webhook", "id": wid, "name": name, "method": self.command,
                       "path": self._rec["path"], "body": self._rec["body"], "json": obj,
                       "headers": self._rec["headers"], "received": self._rec["received"],
                       "duplicates": 0}
                state.webhook_by_id[key] = rec
        if dup is not None:
            self._rec["duplicate"] = True
            state.touched()
            self._send(200, {"ok": True, "duplicate": True})
            return
        state.add_lead("webhook", rec)
        self._send(200, {"ok": True})

    # -- control API ---------------------------------------------------------------------------

    def _control(self, path, query, body):
        state = self.server.state
        sub = path[len("/_control"):]
        method = self.command

        def api_param():
            apis = query.get("api")
            if not apis:
                return list(APIS)
            if apis[0] not in APIS:
                return None
            return [apis[0]]

        if sub == "/health" and method == "GET":
            self._send(200, {"ok": True})
        elif sub == "/state" and method == "GET":
            with state.lock:
                self._send(200, {"searches": dict(state.searches)})
        elif sub in ("/leads", "/requests") and method == "GET":
            apis = api_param()
            if apis is None:
                self._send(400, {"error": "api must be one of " + ", ".join(APIS)})
                return
            with state.lock:
                src = state.leads if sub == "/leads" else state.requests
                items = [r for a in apis for r in src[a]]
                data = dumps({sub[1:]: items})
            self._send(200, data)
        elif sub == "/mode" and method == "GET":
            with state.lock:
                self._send(200, {"modes": {a: m.as_dict() for a, m in state.modes.items()},
                                 "id_shape": state.id_shape})
        elif sub == "/mode" and method == "POST":
            req = self._control_json(body)
            if req is None:
                return
            api = req.get("api")
            mode = req.get("mode", "ok")
            count = req.get("count")
            delay = req.get("delay", 1)
            retry_after = req.get("retry_after", 2)
            problems = []
            if api not in APIS and api != "all":
                problems.append("api must be one of %s or all" % ", ".join(APIS))
            if mode not in MODES:
                problems.append("mode must be one of " + ", ".join(MODES))
            if mode == "valuation_failed" and api != "leadpro":
                problems.append("valuation_failed is for api leadpro only")
            if count is not None and (not is_int(count) or count < 1):
                problems.append("count must be a positive integer or null")
            if not is_num(delay) or delay < 0 or delay > 600:
                problems.append("delay must be seconds (0-600)")
            if not is_int(retry_after) or retry_after < 0:
                problems.append("retry_after must be whole seconds")
            if problems:
                self._send(400, {"error": "; ".join(problems)})
                return
            with state.lock:
                for a in (APIS if api == "all" else (api,)):
                    m = ApiMode()
                    m.mode, m.count, m.delay, m.retry_after = mode, count, delay, retry_after
                    if mode == "ok":
                        m.count = None
                    state.modes[a] = m
                modes = {a: m.as_dict() for a, m in state.modes.items()}
            self._send(200, {"ok": True, "modes": modes})
        elif sub == "/id_shape" and method == "POST":
            req = self._control_json(body)
            if req is None:
                return
            shape = req.get("shape")
            if shape not in ID_SHAPES:
                self._send(400, {"error": "shape must be one of " + ", ".join(ID_SHAPES)})
                return
            with state.lock:
                state.id_shape = shape
            self._send(200, {"ok": True, "shape": shape})
        elif sub == "/reset" and method == "POST":
            state.reset()
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": "unknown control endpoint"})

    def _control_json(self, body):
        try:
            req = parse_json(body) if body.strip() else {}
        except ValueError:
            req = None
        if not isinstance(req, dict):
            self._send(400, {"error": "body must be a JSON object"})
            return None
        return req


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def build_arg_parser():
    env = os.environ.get
    p = argparse.ArgumentParser(description="Stand-in LeadPro / Leadping / Lofty / webhook APIs")
    p.add_argument("--host", default=env("LEADAPI_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("LEADAPI_PORT", "8099")))
    p.add_argument("--record", default=env("LEADAPI_RECORD") or None,
                   help="write the accepted lead records as JSON to this file after each one")
    p.add_argument("--leadpro-key", default=env("LEADAPI_LEADPRO_KEY", "test-leadpro-key"))
    p.add_argument("--leadping-source-id",
                   default=env("LEADAPI_LEADPING_SOURCE_ID", "test-source"))
    p.add_argument("--leadping-source-key",
                   default=env("LEADAPI_LEADPING_SOURCE_KEY", "test-source-key"))
    p.add_argument("--leadping-bearer", default=env("LEADAPI_LEADPING_BEARER", "lp_src_test"))
    p.add_argument("--lofty-key", default=env("LEADAPI_LOFTY_KEY", "test-lofty-key"))
    p.add_argument("--lofty-bearer", default=env("LEADAPI_LOFTY_BEARER", "test-lofty-oauth"))
    p.add_argument("--webhook-secret",
                   default=env("LEADAPI_WEBHOOK_SECRET", DEFAULT_WEBHOOK_SECRET))
    return p


def main(argv=None):
    args = build_arg_parser().parse_args(argv)
    config = Config(args)
    server = Server((config.host, config.port), Handler)
    server.state = State(config)
    server.state.reset()
    host, port = server.server_address[:2]
    sys.stderr.write("leadapi %s listening on http://%s:%d\n" % (now_iso(), host, port))
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
