"""The default layout and the starter gallery.

A project's default template is the layout every new email starts from: a header with the
project's name, the content between `<!-- content -->` markers, and a footer with the postal
address and the unsubscribe link. Starters are contents poured into that layout, so a project
that restyles its default template gets starters in its own style.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTENT_START = "<!-- content -->"
CONTENT_END = "<!-- /content -->"

LAYOUT = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { margin: 0; padding: 0; background: #f4f5f7; font-family: -apple-system, "Segoe UI",
         Roboto, Helvetica, Arial, sans-serif; color: #1f2933; }
  .wrapper { width: 100%; background: #f4f5f7; padding: 24px 0; }
  .card { max-width: 600px; margin: 0 auto; background: #ffffff; border-radius: 8px; }
  .header { padding: 24px 32px; font-size: 18px; font-weight: bold; color: #3b4cca; }
  .content { padding: 8px 32px 24px; font-size: 16px; line-height: 1.5; }
  .button { display: inline-block; padding: 12px 20px; background: #3b4cca; color: #ffffff;
            text-decoration: none; border-radius: 6px; font-weight: bold; }
  .footer { max-width: 600px; margin: 0 auto; padding: 16px 32px; font-size: 12px;
            color: #7b8794; text-align: center; }
  .footer a { color: #7b8794; }
  @media (max-width: 620px) { .content, .header { padding-left: 16px; padding-right: 16px; } }
</style>
</head>
<body>
<div class="wrapper">
  <div class="card">
    <div class="header">{{ project.name }}</div>
    <div class="content">
<!-- content -->
<!-- /content -->
    </div>
  </div>
  <div class="footer">
    <p>{{ project.address }}</p>
    <p><a href="{{ unsubscribe_url }}">Unsubscribe</a> ·
       <a href="{{ preferences_url }}">Email preferences</a></p>
  </div>
</div>
</body>
</html>
"""


@dataclass(frozen=True, slots=True)
class Starter:
    key: str
    name: str
    description: str
    subject: str
    preheader: str
    content: str


DEFAULT = Starter(
    key="default",
    name="Default layout",
    description="The project's layout: header, content, footer with address and unsubscribe.",
    subject="News from {{ project.name }}",
    preheader="",
    content="""<p>Hi {{ customer.first_name | default: "there" }},</p>
<p>Write your message here.</p>""",
)

STARTERS: dict[str, Starter] = {
    s.key: s
    for s in (
        Starter(
            key="welcome",
            name="Welcome",
            description="Greets a new customer and points to the first step.",
            subject="Welcome to {{ project.name }}, {{ customer.first_name | default: 'friend' }}!",
            preheader="Everything you need to get started.",
            content="""<h1>Welcome aboard, {{ customer.first_name | default: "friend" }}!</h1>
<p>Thanks for joining {{ project.name }}. We're glad you're here.</p>
<p>The best way to start is to set up your account in a couple of minutes:</p>
<p><a class="button" href="{{ data.cta_url | default: '#' }}">Get started</a></p>
<p>Questions? Just reply to this email.</p>""",
        ),
        Starter(
            key="onboarding",
            name="Onboarding step",
            description="One step of an onboarding series, with a single call to action.",
            subject="Your next step with {{ project.name }}",
            preheader="A two-minute step that makes everything easier.",
            content="""<h2>{{ data.step_title | default: "Your next step" }}</h2>
<p>Hi {{ customer.first_name | default: "there" }},</p>
<p>{{ data.step_text | default: "Here is what to do next to get the most out of your account." }}</p>
<p><a class="button" href="{{ data.cta_url | default: '#' }}">Continue</a></p>""",
        ),
        Starter(
            key="announcement",
            name="Announcement",
            description="News for everyone: a feature, an event, a change.",
            subject="{{ data.headline | default: 'Something new' }}",
            preheader="{{ data.summary }}",
            content="""<h1>{{ data.headline | default: "Something new" }}</h1>
<p>Hi {{ customer.first_name | default: "there" }},</p>
<p>{{ data.body | default: "We have news to share." }}</p>
<p><a class="button" href="{{ data.cta_url | default: '#' }}">Learn more</a></p>""",
        ),
        Starter(
            key="receipt",
            name="Receipt",
            description="Order confirmation from an `Order Completed` event.",
            subject="Your receipt from {{ project.name }}",
            preheader="Order {{ event.properties.order_id }}",
            content="""<h2>Thanks for your order</h2>
<p>Order <strong>{{ event.properties.order_id }}</strong></p>
<table width="100%" cellpadding="4">
{% for p in event.properties.products %}
  <tr><td>{{ p.name }} x {{ p.quantity | default: 1 }}</td><td align="right">{{ p.price }}</td></tr>
{% endfor %}
  <tr><td><strong>Total</strong></td>
      <td align="right"><strong>{{ event.properties.total }} {{ event.properties.currency | default: "USD" | upcase }}</strong></td></tr>
</table>""",
        ),
        Starter(
            key="nps",
            name="NPS survey",
            description="How likely are you to recommend us? Scores 0 to 10, one click each.",
            subject="How likely are you to recommend {{ project.name }}?",
            preheader="One click, ten seconds.",
            content="""<p>Hi {{ customer.first_name | default: "there" }},</p>
<p>How likely are you to recommend {{ project.name }} to a friend or colleague?</p>
<table cellpadding="0" cellspacing="4"><tr>
{% for score in (0..10) %}
  <td><a class="button" style="padding:8px 10px" href="{{ survey_url }}?score={{ score }}">{{ score }}</a></td>
{% endfor %}
</tr></table>
<p style="font-size:12px;color:#7b8794">0 = not at all likely, 10 = extremely likely</p>""",
        ),
    )
}


def fill(layout: str, content: str) -> str:
    """Put `content` between a layout's content markers (or append it if they are gone)."""
    start, end = layout.find(CONTENT_START), layout.find(CONTENT_END)
    if start == -1 or end == -1 or end < start:
        return layout + "\n" + content
    return f"{layout[: start + len(CONTENT_START)]}\n{content}\n{layout[end:]}"
