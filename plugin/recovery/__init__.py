"""Recovery: what reminders brought back. Opening a reminder's link (:mod:`.links`) and the
report of reminders, clicks and recovered orders (:mod:`.report`)."""
