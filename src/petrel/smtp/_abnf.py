"""SMTP grammar as named regular expressions, each with the RFC section it comes from.

Everything here works on ``str`` decoded from UTF-8: RFC 6531 (SMTPUTF8) extends
``atext``, ``qtextSMTP`` and domain labels with non-ASCII UTF-8, and whether such an
address is *allowed* in a given transaction is decided by the caller, not the grammar.
Digits are spelled ``[0-9]``: on ``str``, ``\\d`` would also match non-ASCII digits such
as "٥", and a chunk size or SIZE the peer and we read differently is a framing hazard.
"""

from __future__ import annotations

import re

# RFC 5322 §3.2.3 atext, extended by RFC 6531 §3.3 with UTF8-non-ascii.
_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff"
ATOM = rf"[{_ATEXT}]+"
# RFC 5321 §4.1.2 Dot-string = Atom *("."  Atom)
DOT_STRING = rf"{ATOM}(?:\.{ATOM})*"
# RFC 5321 §4.1.2 Quoted-string = DQUOTE *QcontentSMTP DQUOTE
#   qtextSMTP = %d32-33 / %d35-91 / %d93-126 (+ UTF8-non-ascii, RFC 6531)
#   quoted-pairSMTP = %d92 %d32-126
QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
LOCAL_PART = rf"(?:{DOT_STRING}|{QUOTED_STRING})"

# RFC 5321 §4.1.2 sub-domain = Let-dig [Ldh-str]; U-labels allowed by RFC 6531.
_LET_DIG = r"[A-Za-z0-9\u0080-\U0010ffff]"
SUB_DOMAIN = rf"{_LET_DIG}(?:[A-Za-z0-9\-\u0080-\U0010ffff]*{_LET_DIG})?"
DOMAIN = rf"{SUB_DOMAIN}(?:\.{SUB_DOMAIN})*"

# RFC 5321 §4.1.3 address literals.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV6 = r"IPv6:[0-9A-Fa-f:.]+"  # validated further with ipaddress
_GENERAL = r"[A-Za-z0-9\-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+"
ADDRESS_LITERAL = rf"\[(?:{_IPV4}|{_IPV6}|{_GENERAL})\]"

# RFC 5321 §4.1.2 Mailbox = Local-part "@" ( Domain / address-literal )
MAILBOX = rf"(?P<local>{LOCAL_PART})@(?P<domain>{DOMAIN}|{ADDRESS_LITERAL})"
# RFC 5321 §4.1.2 A-d-l = At-domain *( "," At-domain ): a source route, accepted and
# ignored (§3.6.1 and Appendix C).
ADL = rf"@{DOMAIN}(?:,@{DOMAIN})*"

PATH_RE = re.compile(rf"<(?:{ADL}:)?{MAILBOX}>")
MAILBOX_RE = re.compile(MAILBOX)
# RFC 5321 §4.1.1.3: "Postmaster" without a domain must be accepted as a recipient.
POSTMASTER_RE = re.compile(r"<postmaster>", re.IGNORECASE)

# RFC 5321 §4.1.2 esmtp-param = esmtp-keyword ["=" esmtp-value]
#   esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
#   esmtp-value   = 1*(%d33-60 / %d62-126), plus UTF-8 under SMTPUTF8 (RFC 6531 §3.3)
ESMTP_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
ESMTP_VALUE_RE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")

# RFC 3461 §4: xtext = *( xchar / hexchar ), hexchar = "+" 2(HEXDIG uppercase)
XTEXT_RE = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
# RFC 3461 §4.2 ORCPT = addr-type ";" xtext, addr-type = atom
ORCPT_RE = re.compile(rf"(?P<type>{ATOM});(?P<addr>.+)")
# RFC 2852 §4 by-value = by-time ";" by-mode [ by-trace ]
BY_RE = re.compile(r"(?P<time>[+-]?[0-9]{1,9});(?P<mode>[NRnr])(?P<trace>[Tt]?)")
# RFC 1870 §3 size-value = 1*20DIGIT
SIZE_RE = re.compile(r"[0-9]{1,20}")
# RFC 3030 §2 bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ]
BDAT_RE = re.compile(r"(?P<size>[0-9]{1,20})(?: +(?P<last>LAST))? *", re.IGNORECASE)
# RFC 1985 §5 ETRN argument: ["@" / "#"] node name
ETRN_RE = re.compile(rf"(?:[@#])?{DOMAIN}|#[\x21-\x7e]+")
# RFC 4954 §4 AUTH mechanism [SP initial-response]; sasl-mech = 1*20(UPPER-ALPHA/DIGIT/"-"/"_")
# The initial response is any one word here: one that is not base64 is the SASL layer's
# 501 5.5.2 (RFC 4954 §4), not a command syntax error.
AUTH_RE = re.compile(r"(?P<mech>[A-Za-z0-9\-_]{1,20})(?: +(?P<initial>\S+))?")
