"""A small help center that is NOT kb/: a note-taking SaaS ("Nimbus Notes"), for the hybrid-retrieval tests.

Written for these tests only (never used to tune anything): articles of different lengths and styles, error
codes that differ only in their code, and a product catalogue with SKUs.
"""

from __future__ import annotations

from retrieval_service.knowledge_base import DocumentIn

ARTICLES: dict[str, str] = {
    "plans/pricing.md": """# Plans and pricing

Nimbus Notes has three plans. Free gives you 3 notebooks and 100 MB of storage. Plus costs $4 a month and
adds unlimited notebooks, 10 GB of storage and offline access on mobile. Teams costs $9 per member per month
and adds shared spaces, admin controls and priority support. Yearly billing saves two months on Plus and Teams.

## Changing your plan

Upgrade or downgrade any time under Settings > Billing. An upgrade takes effect at once and you pay the
difference for the rest of the billing period; a downgrade takes effect when the current period ends.
""",
    "plans/cancel-subscription.md": """# Cancelling your subscription

You can cancel a paid plan under Settings > Billing > Cancel subscription. Your notes stay available: after
the paid period ends the account moves to the Free plan, and notebooks over the Free limit become read-only.
We do not refund partial months, except where the law requires it. If you were charged after cancelling,
contact us within 30 days with the invoice number and we will refund the charge.
""",
    "features/export.md": """# Exporting your notes

Export a single note from its menu (Export as Markdown, PDF or HTML). To export everything, open
Settings > Data > Export all: we prepare a ZIP archive of Markdown files with attachments in folders per
notebook and email you a download link within an hour. The link works for 7 days. Exports of more than
5 GB are split into several archives.
""",
    "features/sharing.md": """# Sharing and collaboration

Share a notebook by clicking Share and entering a colleague's email address. Viewers can read and comment;
editors can also change and delete notes. Public links let anyone with the link read a note without an
account; you can turn a public link off at any time. On the Teams plan, shared spaces give every member
access to the same notebooks, and admins decide who may invite people from outside the company.
""",
    "features/offline.md": """# Working offline

The desktop apps keep a full copy of your notes and work without a connection. On mobile, offline access
is part of the Plus and Teams plans: mark a notebook as available offline and it is downloaded to the
phone. Changes made offline are synced the next time the device is online.
""",
    "troubleshooting/sync-errors/e-4012.md": """# Sync error E-4012

Error E-4012 means the note was changed on two devices at the same time. Nimbus keeps both versions: open the
note and pick the version to keep from the banner at the top. Nothing is lost.
""",
    "troubleshooting/sync-errors/e-4013.md": """# Sync error E-4013

Error E-4013 means the attachment is larger than your plan allows (25 MB on Free, 200 MB on Plus and Teams).
Remove the attachment or upgrade the plan, then sync again.
""",
    "troubleshooting/sync-errors/e-4017.md": """# Sync error E-4017

Error E-4017 means your session expired on this device. Sign out and sign in again; if you use single
sign-on, ask your administrator whether your account is still active.
""",
    "store/hardware.md": """# Nimbus hardware

We sell two accessories in the Nimbus store. The Nimbus Pen (SKU NB-PEN-02) is a stylus for handwritten
notes on tablets; it charges over USB-C and lasts 12 hours. The Nimbus Scanner (SKU NB-SCN-11) scans paper
pages straight into a notebook. Both ship within 3 business days and come with a one-year warranty.
""",
    "account/delete-account.md": """# Deleting your account

To delete your account and all notes, go to Settings > Account > Delete account and confirm with your
password. Deletion is permanent after 14 days; until then you can restore the account by signing in.
Cancel any paid subscription first, or it is cancelled automatically on deletion.
""",
}

ON_TOPIC: dict[str, str] = {
    "How much does the Plus plan cost per month?": "plans/pricing.md",
    "can I get my money back if I stop paying halfway through the month": "plans/cancel-subscription.md",
    "I want to download a copy of all my notes": "features/export.md",
    "How do I let a coworker edit my notebook?": "features/sharing.md",
    "Does the phone app work without internet?": "features/offline.md",
    "How do I close my account for good?": "account/delete-account.md",
    "What should I do about a session expired message when syncing?": "troubleshooting/sync-errors/e-4017.md",
    "how long does the stylus battery last": "store/hardware.md",
}

OFF_TOPIC = (
    "What is the capital of Peru?",
    "Write a short poem about winter",
    "How do I repot an orchid?",
    "Who won the Tour de France in 2019?",
    "How many bones are in the human body?",
    "What's a good marinade for chicken?",
)


def documents() -> list[DocumentIn]:
    return [DocumentIn(doc_id=doc_id, content=text) for doc_id, text in ARTICLES.items()]
